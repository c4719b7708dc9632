"""The model core: one reader of the model directory and one scorer pipeline for every backend.

- `resources`: CPU share, default base model (no torch)
- `directory`: the model directory layout and its reader `ModelDir` (no torch)
- `signals`: kNN and lexical signals, the one mixing function and the one weight search (no torch)
- `batching`: length-sorted token batches with the tokenizer's own padding (no torch)
- `classifier`: the torch classifier, `save_model_dir`, training-time encoding
- `encoders`: torch fp32 / int8 and ONNX Runtime encoders (torch imported lazily)
- `scorer`: `UnitScorer`, texts -> encoder -> head -> temperature -> signals, the same for every backend
"""
