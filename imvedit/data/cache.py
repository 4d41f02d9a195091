"""The latent cache of a prepared folder: what the frozen VAE and text encoder make of each pair, once.

    PAIRS_DIR/cache/
      meta.json                  format, the base it was made with (name + fingerprints), sequence length
      empty.safetensors          the empty prompt's embedding and pooled embedding
      shard-00000.safetensors    per pair `<id>.source`, `<id>.target` (normalised latents, (z, 1, h, w)),
                                 `<id>.instruction`, `<id>.caption` (embeddings of the prompt's own tokens,
                                 (n, text_dim)) and `<id>.instruction_pooled`, `<id>.caption_pooled`

Embeddings are stored without their zero padding (a 12-token instruction is 12 rows, not 226) and
padded back when batched. A cache is used only by the base named in meta.json's key (its folder path
or id, and its transformer fingerprint), so a cache made for one base is never read for another.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UsageError
from ..fsutil import staged_dir
from ..models.wan import encode_text, normalize_latents, sequence_length
from .dataset import PairsDataset

CACHE_DIR = "cache"
CACHE_VERSION = 1
PAIRS_PER_SHARD = 1024


def base_id(name: str) -> str:
    """A base as the cache remembers it: a folder by its absolute path, a builtin or hub id by name."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def cache_key(base) -> dict:
    """What a cache depends on. Only the transformer is loaded when training from a cache, so the key
    is the base's identity (folder path or id) and its transformer fingerprint, plus the prompt length;
    replacing a base's weights in place under the same path needs a new `prepare --cache`."""

    return {
        "base": base_id(base.name),
        "fingerprint": base.fingerprint,
        "sequence_length": sequence_length(base.tokenizer),
    }


def read_cache_meta(pairs_dir: str | Path) -> dict | None:
    path = Path(pairs_dir) / CACHE_DIR / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cache_matches(pairs_dir: str | Path, model: str, fingerprint: str) -> bool:
    meta = read_cache_meta(pairs_dir)
    return (
        meta is not None
        and meta.get("format_version") == CACHE_VERSION
        and meta["key"]["base"] == base_id(model)
        and meta["key"]["fingerprint"] == fingerprint
    )


@torch.no_grad()
def build_cache(pairs_dir: str | Path, base, batch_size: int = 16, progress: Callable[..., None] | None = None) -> dict:
    """Encode every pair of a prepared folder with `base`'s VAE and text encoder into PAIRS_DIR/cache."""

    dataset = PairsDataset(pairs_dir)
    device = next(base.vae.parameters()).device
    key = cache_key(base)
    n = len(dataset)
    with staged_dir(Path(pairs_dir) / CACHE_DIR) as tmp:
        empty, empty_pooled = encode_text(base.tokenizer, base.text_encoder, [""])
        save_file(
            {"text": empty[0].contiguous().cpu(), "pooled": empty_pooled[0].contiguous().cpu()},
            str(tmp / "empty.safetensors"),
        )
        shard, shard_index, done = {}, 0, 0
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            ids = [dataset.rows[i]["id"] for i in range(start, start + len(items))]
            for i, item in enumerate(items):  # pairs differ in size across buckets: encode one at a time
                pixels = torch.stack([item["source"], item["target"]]).to(device, base.vae.dtype)
                z = normalize_latents(base.vae, base.vae.encode(pixels).latent_dist.mode()).float().cpu()
                shard[f"{ids[i]}.source"], shard[f"{ids[i]}.target"] = z[0].contiguous(), z[1].contiguous()
            for role in ("instruction", "caption"):
                texts = [item[role] for item in items]
                embeds, pooled = encode_text(base.tokenizer, base.text_encoder, texts)
                lengths = base.tokenizer(
                    texts, truncation=True, max_length=embeds.shape[1], add_special_tokens=True
                ).input_ids
                for i, pid in enumerate(ids):
                    shard[f"{pid}.{role}"] = embeds[i, : len(lengths[i])].float().cpu().contiguous()
                    shard[f"{pid}.{role}_pooled"] = pooled[i].float().cpu().contiguous()
            done += len(items)
            if len(shard) >= 6 * PAIRS_PER_SHARD or done == n:
                save_file(shard, str(tmp / f"shard-{shard_index:05d}.safetensors"))
                shard, shard_index = {}, shard_index + 1
            if progress:
                progress(done, n, info="cache")
        meta = {"format_version": CACHE_VERSION, "base": base.name, "key": key, "pairs": n, "shards": shard_index}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # last: a cache without it is not used
    return meta


class CachedPairs(torch.utils.data.Dataset):
    """A prepared folder's cache as training items: latents and text embeddings, no images."""

    def __init__(self, pairs_dir: str | Path, rows: list[dict]):
        root = Path(pairs_dir) / CACHE_DIR
        meta = read_cache_meta(pairs_dir)
        if meta is None or meta.get("format_version") != CACHE_VERSION:
            raise UsageError(f"{root} is not a cache this version reads.", "Re-run `imvedit prepare --cache`.")
        self.rows = rows
        self.length = meta["key"]["sequence_length"]
        self.where = {}
        self.handles = []
        for path in sorted(root.glob("shard-*.safetensors")):
            handle = safe_open(str(path), framework="pt")
            self.handles.append(handle)
            for k in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                self.where[k] = len(self.handles) - 1
        missing = [r["id"] for r in rows if f"{r['id']}.source" not in self.where]
        if missing:
            raise UsageError(f"The cache in {root} lacks {len(missing)} pairs.", "Re-run `imvedit prepare --cache`.")
        with safe_open(str(root / "empty.safetensors"), framework="pt") as f:
            self.empty_text, self.empty_pooled = f.get_tensor("text")[None], f.get_tensor("pooled")[None]

    def __len__(self) -> int:
        return len(self.rows)

    def _get(self, key: str) -> torch.Tensor:
        return self.handles[self.where[key]].get_tensor(key)

    def __getitem__(self, i: int) -> dict:
        pid = self.rows[i]["id"]
        return {
            k: self._get(f"{pid}.{k}")
            for k in ("source", "target", "instruction", "caption", "instruction_pooled", "caption_pooled")
        }

    def collate(self, items: list[dict]) -> dict:
        """Stack latents; pad the embeddings back to the sequence length with zeros, as encode_text does."""
        out = {
            k: torch.stack([it[k] for it in items])
            for k in ("source", "target", "instruction_pooled", "caption_pooled")
        }
        for role in ("instruction", "caption"):
            padded = torch.zeros(len(items), self.length, items[0][role].shape[-1])
            for j, it in enumerate(items):
                padded[j, : len(it[role])] = it[role]
            out[role] = padded
        return out
