import gymnasium as gym

from igpo_env.data import load_corpus
from igpo_env.retrievers import Hit, register_retriever
from igpo_env.retrievers.bm25 import tokenize  # lower-case words, stopwords removed


class OverlapRetriever:  # a Retriever: a name and a batch search(queries, k)
    name = "overlap"

    def __init__(self, corpus="default"):  # takes_corpus=True: gets the env's corpus=
        self.docs = [(set(tokenize(f"{d.title} {d.text}")), d) for d in load_corpus(corpus)]

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        hits = []
        for q in (set(tokenize(query)) for query in queries):  # top k by words shared
            best = sorted(self.docs, key=lambda wd: len(q & wd[0]), reverse=True)[:k]
            hits.append([Hit(d.id, d.title, d.text, float(len(q & w))) for w, d in best])
        return hits


register_retriever("overlap", OverlapRetriever, takes_corpus=True, description="word overlap")
env = gym.make("SearchQA-v0", retriever="overlap")  # no corpus=: the shipped "default"
obs, info = env.reset(seed=0)
print(info["question"], env.step(f"<search>{info['question']}</search>")[0])
