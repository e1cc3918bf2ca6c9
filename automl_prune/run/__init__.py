"""The stages of a run: base model, search, re-rank, finish and export, strung together by the pipeline."""
