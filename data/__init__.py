"""The sample photo world and the dataset formats users train on.

vocab.py      the world's vocabulary, question templates and split rules (one home for each)
world.py      photo specs, rendering (JPEG + EXIF), captions, QA, POPE probes, album questions
synth.py      writes an album folder: photos/, llava.json, captions.jsonl, ground_truth.json
formats.py    LLaVA JSON, JSONL/CSV image-caption pairs, sidecar-.txt folders -> Record
dataset.py    open_dataset(path) -> CafeDataset, a streaming torch IterableDataset of CafeSample
contact_sheet.py, __main__.py   `python -m data synth|contact-sheet|inspect`
"""
