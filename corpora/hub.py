"""Fetch single files from Hugging Face dataset repositories (for the wiki-18 and FlashRAG recipes).

``huggingface_hub`` comes with ``transformers`` (a dependency of the project), so no extra
install is needed; it is imported only when a recipe is asked to download. Every recipe also
takes files that are already on disk, for machines without Hugging Face access.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

Fetch = Callable[[str, str, Path], Path]
"""``fetch(repo_id, filename, local_dir) -> path``: one file of a dataset repository."""


def fetch_dataset_file(repo_id: str, filename: str, local_dir: Path) -> Path:
    """Download ``filename`` of the dataset repository ``repo_id`` into ``local_dir``.

    The file keeps its path inside the repository (``nq/test.jsonl`` lands in
    ``local_dir/nq/test.jsonl``); a file already there with the right hash is not fetched again.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - transformers always brings it
        raise RuntimeError(
            "downloading needs huggingface_hub (pip install huggingface_hub), or fetch the "
            f"file yourself: https://huggingface.co/datasets/{repo_id}/resolve/main/{filename}"
        ) from exc
    print(f"downloading {repo_id}/{filename} into {local_dir} ...", file=sys.stderr, flush=True)
    try:
        path = hf_hub_download(
            repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=str(local_dir)
        )
    except Exception as exc:  # the hub's errors are many types (HTTP, offline, not found)
        raise RuntimeError(
            f"could not download {filename} from {repo_id} ({type(exc).__name__}: {exc}); "
            f"fetch https://huggingface.co/datasets/{repo_id}/resolve/main/{filename} "
            f"into {local_dir} yourself and run again without --download"
        ) from exc
    return Path(path)
