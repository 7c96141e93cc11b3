"""Data hygiene: pure rules over the `Conversation` rows the data stage produces; each row is
kept, kept for a person's review, or rejected with the rules that fired and why.

    structure.py      empty answers, echoes, truncation, unfilled placeholders
    length.py         too short / too long in tokens, answer/prompt ratio outliers
    repetition.py     Gopher-style repeated lines and n-grams, loops
    slop.py           GPT-isms from a phrase file, per 1k words
    refusal.py        refusals where the prompt is benign
    grounding.py      references to images, files, links nobody gave; missing inputs
    language.py       language mismatch, mojibake, control characters
    dedup.py          exact and MinHash-LSH near duplicates (datasketch)
    contamination.py  n-gram overlap with eval files
    model_scores.py   response loss, IFD, surprising tokens (with a model)
    audit.py          runs them all; outputs.py writes the audit folder; run.py: entry points

Knows nothing of training; imports only sftlab.core, sftlab.data and sftlab.config.
"""
