import pytest
import torch
from conftest import randomize_adapter

from imvedit.errors import UsageError
from imvedit.models.adapter_file import load_adapter, read_adapter_metadata, save_adapter
from imvedit.models.bases import build_tiny_random, config_fingerprint
from imvedit.models.imvedit import ImVideoEditAdapter


@pytest.fixture
def saved(tmp_path, tiny_base):
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(tiny_base.transformer, rank=4, gate="no_text"))
    path = save_adapter(adapter, tmp_path / "a.safetensors", tiny_base.identity, training={"steps": 3})
    return adapter, path, tiny_base


def test_round_trip_keeps_weights_config_and_identity(saved):
    adapter, path, base = saved
    loaded, meta = load_adapter(path, base.fingerprint)
    assert dict(loaded.config) == dict(adapter.config)
    for (k, a), (k2, b) in zip(adapter.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert meta["base"]["name"] == "tiny-random" and meta["training"] == {"steps": 3}
    assert not any(p.requires_grad for p in loaded.parameters())


def test_an_adapter_for_another_base_is_refused(saved):
    _, path, base = saved
    other = dict(base.transformer.config)
    other["num_layers"] = 3
    with pytest.raises(UsageError, match="was trained for base 'tiny-random'"):
        load_adapter(path, config_fingerprint(other))


def test_truncated_and_bit_flipped_files_are_refused(saved, tmp_path):
    _, path, base = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated|damaged|readable"):
        load_adapter(truncated, base.fingerprint)
    flipped = tmp_path / "flipped.safetensors"
    raw = bytearray(data)
    raw[-5] ^= 0x10  # a bit in the last tensor's payload
    flipped.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="corrupted"):
        load_adapter(flipped, base.fingerprint)


def test_files_that_are_not_adapters_are_refused(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UsageError, match="not an imvedit adapter"):
        read_adapter_metadata(plain)
    pickle = tmp_path / "pickle.safetensors"
    torch.save({"w": torch.zeros(2)}, pickle)
    with pytest.raises(UsageError, match="not a readable safetensors"):
        read_adapter_metadata(pickle)
    with pytest.raises(UsageError, match="does not exist"):
        read_adapter_metadata(tmp_path / "missing.safetensors")


def test_fingerprint_depends_on_architecture_only():
    a, b = build_tiny_random(seed=0), build_tiny_random(seed=1)
    assert a.fingerprint == b.fingerprint  # same architecture, other weights
