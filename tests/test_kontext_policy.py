"""FluxKontextPolicy on tiny components: diffusers oracle with one reference, several references, position-id
schemes, rollout/log-prob consistency, reference caching and the bad-input errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record, RecordError, SubjectRef, resolve_records
from psrl.models.base import Policy, Rollout
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig

pytest.importorskip("diffusers")


def _png(root, name, size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA")
    img = img.convert(mode) if mode != "RGBA" else img
    img.save(root / name)
    return str(root / name)  # a resolved path, as records reach the policy


def _policy(root, **args):
    from psrl.models.flux_kontext import FluxKontextPolicy

    args = {"reference_long_side_single": 16, "reference_long_side_multi": 8, **args}
    cfg = ModelConfig(name="flux_kontext", path="tiny", max_sequence_length=32, lora=LoraConfig(rank=4, alpha=4),
                      args=args)
    return FluxKontextPolicy.from_config(cfg, "cpu")


def _rec(rid, *images, prompt="a dog next to a cat"):
    return Record(id=rid, prompt=prompt, subjects=tuple(SubjectRef(image=i, phrase=f"s{k}")
                                                       for k, i in enumerate(images)))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.component
def test_one_reference_ode_matches_flux_kontext_pipeline(tmp_path):
    from diffusers import FluxKontextPipeline

    from psrl.models.tiny_more import tiny_kontext_components

    name = _png(tmp_path, "ref.png", (16, 16))
    pipe = FluxKontextPipeline(**tiny_kontext_components(), image_encoder=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(image=Image.open(tmp_path / name).convert("RGB"), prompt="a dog next to a cat", num_inference_steps=3,
               guidance_scale=2.5, height=16, width=16, max_area=16 * 16, _auto_resize=False,
               max_sequence_length=32, output_type="pt", generator=_gen()).images
    policy = _policy(tmp_path)
    assert isinstance(policy, Policy)
    out = policy.generate([_rec("r", name)], SamplingConfig(num_steps=3, height=16, width=16, guidance_scale=2.5),
                          _gen())
    assert out.shape == ref.shape == (1, 3, 16, 16)
    assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.unit
def test_position_id_schemes():
    from psrl.models.flux_kontext import reference_position_ids

    shapes, target = [(2, 3), (1, 2)], (4, 4)
    psr = reference_position_ids(shapes, target, "psr")
    assert psr.shape == (8, 3)
    assert psr[:6, 0].eq(1).all() and psr[6:, 0].eq(2).all()            # frame axis only
    assert psr[:6, 1:].tolist() == [[r, c] for r in range(2) for c in range(3)]
    assert psr[6:, 1:].tolist() == [[0, 0], [0, 1]]                    # each reference on its own grid
    uno = reference_position_ids(shapes, target, "uno")
    assert uno[:, 0].eq(1).all()
    assert uno[0, 1:].tolist() == [4, 4] and uno[6, 1:].tolist() == [6, 7]   # diagonal, accumulated offsets
    assert reference_position_ids(shapes, target, "uno_h")[6, 1:].tolist() == [6, 0]
    assert reference_position_ids(shapes, target, "uno_w")[6, 1:].tolist() == [0, 7]


@pytest.mark.component
@pytest.mark.parametrize("scheme", ["psr", "uno"])
def test_several_references_rollout_and_recompute(tmp_path, scheme):
    a = _png(tmp_path, "a.png", (20, 12), seed=1)
    b = _png(tmp_path, "b.png", (12, 12), mode="RGBA", seed=2)     # converted to RGB
    c = _png(tmp_path, "c.png", (16, 16), mode="L", seed=3)         # converted to RGB
    policy = _policy(tmp_path, position_ids=scheme)
    recs = [_rec("two", a, b)] * 2 + [_rec("three", a, b, c)] * 2 + [_rec("one", c)]
    sampling = SamplingConfig(num_steps=3, height=16, width=16, guidance_scale=2.5, noise_level=0.8)
    ro = policy.rollout(recs, sampling, [_gen(i) for i in range(len(recs))])
    # multi-reference rule: long side 8 -> 8x4 (+crop to even) and 8x8; one reference: long side 16
    assert ro.cond["ref_len"].tolist() == [2 * 4 + 4 * 4] * 2 + [2 * 4 + 4 * 4 + 4 * 4] * 2 + [8 * 8]
    assert ro.images.shape == (5, 3, 16, 16) and torch.isfinite(ro.log_probs).all()
    for step in ro.trained_steps:
        lp = policy.log_prob(ro.select([4, 1, 2]), step).log_prob
        assert torch.allclose(lp, ro.log_probs[[4, 1, 2], step], atol=1e-5, rtol=0)


@pytest.mark.component
def test_rollouts_with_different_reference_widths_concatenate(tmp_path):
    a, c = _png(tmp_path, "a.png", (16, 16), seed=1), _png(tmp_path, "c.png", (16, 16), seed=3)
    policy = _policy(tmp_path)
    sampling = SamplingConfig(num_steps=3, height=16, width=16, noise_level=0.8)
    two = policy.rollout([_rec("two", a, c)] * 2, sampling, [_gen(i) for i in range(2)])
    one = policy.rollout([_rec("one", a)], sampling, [_gen(9)])
    assert two.cond["ref_latents"].shape[1] == 2 * 4 * 4 and one.cond["ref_latents"].shape[1] == 8 * 8
    both = Rollout.cat([two, one])
    assert both.cond["ref_latents"].shape == (3, 64, one.cond["ref_latents"].shape[2])
    assert both.cond["ref_len"].tolist() == [32, 32, 64]
    assert (both.cond["ref_latents"][:2, 32:] == 0).all()
    for step in both.trained_steps:
        lp = policy.log_prob(both, step).log_prob
        assert torch.allclose(lp, both.log_probs[:, step], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cond keys"):
        Rollout.cat([two, _rollout_without_refs(two)])


def _rollout_without_refs(ro):
    from dataclasses import replace

    return replace(ro, cond={k: v for k, v in ro.cond.items() if not k.startswith("ref_")})


@pytest.mark.component
def test_references_are_encoded_once_per_record(tmp_path, monkeypatch):
    a = _png(tmp_path, "a.png", (16, 16))
    policy = _policy(tmp_path)
    calls = []
    orig = policy.vae.encode
    monkeypatch.setattr(policy.vae, "encode", lambda x: calls.append(x.shape) or orig(x))
    sampling = SamplingConfig(num_steps=2, height=16, width=16, noise_level=0.7)
    ro = policy.rollout([_rec("r", a)] * 4, sampling, _gen())
    policy.log_prob(ro, 0)
    policy.rollout([_rec("r", a)] * 2, sampling, _gen(1))
    assert len(calls) == 1


@pytest.mark.component
def test_a_reference_image_shared_by_records_is_encoded_once_per_size_class(tmp_path, monkeypatch):
    """Subjects recur across records: each image is encoded once for single-reference records and once for
    multi-reference ones (another long side), and the tokens equal a fresh policy's (the cache changes nothing)."""
    a, b, c = (_png(tmp_path, f"{n}.png", (16, 16), seed=k) for k, n in enumerate("abc"))
    policy = _policy(tmp_path)
    calls = []
    orig = policy.vae.encode
    monkeypatch.setattr(policy.vae, "encode", lambda x: calls.append(tuple(x.shape)) or orig(x))
    records = [_rec("r1", a, b), _rec("r2", b, c), _rec("r3", a), _rec("r4", c, a), _rec("r5", a)]
    got = [policy.encode_references(r) for r in records]
    assert sorted(calls) == sorted([(1, 3, 8, 8)] * 3 + [(1, 3, 16, 16)])  # a, b, c at 8 px; a alone at 16 px
    fresh = _policy(tmp_path, reference_cache_size=0)
    for r, (tokens, shapes) in zip(records, got):
        want_tokens, want_shapes = fresh.encode_references(r)
        assert shapes == want_shapes and torch.equal(tokens, want_tokens)


@pytest.mark.component
def test_bad_inputs_name_the_record_and_value(tmp_path):
    a = _png(tmp_path, "a.png", (16, 16))
    policy = _policy(tmp_path, max_references=2)
    s = SamplingConfig(num_steps=1, height=16, width=16)
    with pytest.raises(RecordError, match="'many'.*3 references.*at most 2"):
        policy.generate([_rec("many", a, a, a)], s)
    with pytest.raises(RecordError, match="'none'.*no reference"):
        policy.generate([_rec("none")], s)
    with pytest.raises(RecordError, match="'gone'.*missing.png.*not found"):
        policy.generate([_rec("gone", str(tmp_path / "missing.png"))], s)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(RecordError, match="'junk'.*unreadable"):
        policy.generate([_rec("junk", str(tmp_path / "junk.png"))], s)
    thin = _png(tmp_path, "thin.png", (64, 2))
    with pytest.raises(RecordError, match="'thin'.*64x2.*too small"):
        policy.generate([_rec("thin", thin)], s)
    with pytest.raises(RecordError, match="'rel'.*'a.png' is not resolved against a data root"):
        policy.generate([_rec("rel", "a.png")], s)  # nobody resolved it: refused, never read from the cwd
    with pytest.raises(RecordError, match="escapes"):
        resolve_records([_rec("esc", "../x.png")], tmp_path)  # escapes are refused where records are resolved
    from psrl.config import ConfigError

    with pytest.raises(ConfigError, match="position_ids"):
        _policy(tmp_path, position_ids="diagonal")
    with pytest.raises(ConfigError, match="model.args.bogus"):
        _policy(tmp_path, bogus=1)


@pytest.mark.component
def test_mismatched_lora_file_is_a_clear_error(tmp_path):
    from psrl.errors import ModelLoadError
    from psrl.models.flux_kontext import FluxKontextPolicy

    _policy(tmp_path).save_lora(tmp_path / "r4")
    cfg = ModelConfig(name="flux_kontext", path="tiny", max_sequence_length=32,
                      lora=LoraConfig(rank=8, alpha=8, path=str(tmp_path / "r4")))
    with pytest.raises(ModelLoadError, match=r"r4.*rank"):
        FluxKontextPolicy.from_config(cfg, "cpu")


@pytest.mark.component
def test_policies_read_resolved_records_and_take_no_root(tmp_path):
    """Records resolved where they are loaded reach the policy with absolute paths and generate; a relative path
    (a record nobody resolved) is an error naming the record; a root in model.args is refused before any weight."""
    from psrl.config import ConfigError
    from psrl.models.flux_kontext import FluxKontextPolicy

    _png(tmp_path, "a.png", (16, 16))
    s = SamplingConfig(num_steps=2, height=16, width=16)
    resolved = resolve_records([_rec("r", "a.png")], tmp_path)
    assert resolved[0].subjects[0].image == str(tmp_path.resolve() / "a.png")
    assert resolved[0].to_json()["subjects"][0]["image"] == "a.png"  # the file's form again
    policy = _policy(tmp_path)
    assert policy.generate(resolved, s, _gen()).shape == (1, 3, 16, 16)
    with pytest.raises(RecordError, match="'r': reference image 'a.png' is not resolved against a data root"):
        policy.generate([_rec("r", "a.png")], s)
    cfg = ModelConfig(name="flux_kontext", path="tiny", args={"data_root": str(tmp_path)})
    with pytest.raises(ConfigError, match="model.args.data_root: unknown option"):
        FluxKontextPolicy.from_config(cfg, "cpu")
