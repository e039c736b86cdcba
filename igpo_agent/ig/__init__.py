"""Information gain: gold-answer tokens and belief values v_t (packed, naive and live scoring)."""
