"""Tiny offline FLUX components: deterministic from a seed, eval mode, usable tokenizers, runnable pipeline."""
import pytest
import torch

from psrl.models.tiny import (
    tiny_clip_tokenizer, tiny_clip_tokenizer_eos_last, tiny_flux_components, tiny_t5_tokenizer,
)

pytestmark = pytest.mark.component


def _state(c):
    return {f"{name}.{k}": v for name, m in c.items() if isinstance(m, torch.nn.Module)
            for k, v in m.state_dict().items()}


def test_components_are_deterministic_per_seed_and_in_eval_mode():
    a, b, other = tiny_flux_components(seed=0), tiny_flux_components(seed=0), tiny_flux_components(seed=1)
    sa, sb, so = _state(a), _state(b), _state(other)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], so[k]) for k in sa)
    assert all(not m.training for m in a.values() if isinstance(m, torch.nn.Module))
    assert a["transformer"].config.guidance_embeds is True
    assert tiny_flux_components(guidance_embeds=False)["transformer"].config.guidance_embeds is False
    # 2x2 packing: transformer input channels = 4 x VAE latent channels
    assert a["transformer"].config.in_channels == 4 * a["vae"].config.latent_channels


def test_tokenizers_tokenize_text_into_known_tokens():
    clip, t5 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    ids = clip("a dog", add_special_tokens=False).input_ids
    assert ids and clip.unk_token_id not in ids and clip.decode(ids).replace(" ", "") == "adog"
    ids = t5("a dog", add_special_tokens=False).input_ids
    assert ids and t5.unk_token_id not in ids
    eos_last = tiny_clip_tokenizer_eos_last()
    assert eos_last.eos_token_id == len(eos_last) - 1 == max(eos_last("a photo").input_ids)


def test_tokenizers_round_trip_through_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    for name, tok in (("clip", tiny_clip_tokenizer()), ("t5", tiny_t5_tokenizer())):
        tok.save_pretrained(tmp_path / name)
        again = AutoTokenizer.from_pretrained(tmp_path / name)
        assert len(again) == len(tok)
        assert again("a red dog").input_ids == tok("a red dog").input_ids


def test_flux_pipeline_runs_and_is_deterministic():
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_flux_components())
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe("a red dog", num_inference_steps=2, height=16, width=16, max_sequence_length=16,  # noqa: E731
                       output_type="pt", generator=torch.Generator().manual_seed(0)).images
    first, second = run(), run()
    assert first.shape == (1, 3, 16, 16)
    assert torch.equal(first, second)
