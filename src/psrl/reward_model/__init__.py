"""PaCo-style pairwise consistency reward models: data (grids -> labelled pairs, ShareGPT import), LoRA SFT of a
Qwen2.5-VL judge with the weighted first-token loss, and ranking / pairwise evaluation of any psrl reward.
``psrl reward-model pairs | train | eval | merge`` is the command line; the trained adapter is what
``vlm_consistency``'s ``adapter_path`` loads."""
