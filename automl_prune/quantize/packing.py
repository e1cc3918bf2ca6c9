"""Packed storage of a fake-quantized model: weights bit-packed at their bit width, so bytes = real size.

Storage format (version 1), all integers and floats little-endian::

    offset 0        8 bytes   magic b"AMLPQW\\x00\\x01"
    offset 8        4 bytes   H: length of the header (uint32)
    offset 12       H bytes   header: UTF-8 JSON (below)
    offset 12+H     P bytes   payload: the model's parameters, what `quant_cost` counts as its size
    offset 12+H+P   B bytes   buffers: batch-norm running statistics and other non-parameter state

The payload is a float32 section followed by one bitstream:

- float32 section (``float_values`` x 4 bytes): every parameter that is not a quantized weight (biases,
  norm parameters, float layers' weights), then per quantized layer its per-output-channel weight scales,
  and per layer with quantized activations its ``act_scale`` and ``act_zero_point``, in state-dict order;
- bitstream (``ceil(code_bits / 8)`` bytes): the quantized weights of every layer in state-dict order, each
  weight as the unsigned code ``q + (2**(b-1) - 1)`` in ``b`` bits (``q`` in ``[-(2**(b-1)-1), 2**(b-1)-1]``,
  see `automl_prune.quantize.fake`), least significant bit first, codes back to back across layers; only the very last
  byte is padded.

So ``P = ceil(QuantCostModel.size_bits / 8)``: the payload is the analytic size, rounded up to a whole byte once.
The header is the index (names, shapes, dtypes, offsets) that any container format carries, and the buffers are
what a deployment folds into the weights; neither is model size.

Header: ``{"format": 1, "payload_bytes": P, "float_values": F, "code_bits": C, "buffer_bytes": B,
"entries": [...]}``, each entry ``{"name", "kind", "shape", "offset", ...}`` with kind ``float32`` (offset in
float32 values of the float section), ``codes`` (offset in bits of the bitstream, plus ``bits`` and the name of
its ``scale`` entry) or ``buffer`` (offset in bytes of the buffers section, plus ``dtype``).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from automl_prune.atomic import atomic_write
from automl_prune.errors import CheckpointError, ConfigError
from automl_prune.quantize.fake import FLOAT_BITS, QuantMixin, quant_layers, weight_codes

__all__ = ["FORMAT_VERSION", "MAGIC", "load_packed", "pack", "read_header", "save_packed", "unpack"]

MAGIC = b"AMLPQW\x00\x01"
FORMAT_VERSION = 1
_PREFIX = len(MAGIC) + 4
_SCALE_SUFFIX = ":scale"


def _quantized_weights(model: nn.Module) -> dict[str, int]:
    """State-dict names of quantized weights -> their bit width."""
    return {f"{name}.weight": m.w_bits for name, m in quant_layers(model).items() if m.w_bits < FLOAT_BITS}


def pack(model: nn.Module) -> bytes:
    """The packed bytes of a fake-quantized (or float) ``model`` (see the module docstring for the format).

    Raises:
        ConfigError: A parameter that is not float32.
    """
    state = model.state_dict()
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    quantized = _quantized_weights(model)
    entries: list[dict[str, Any]] = []
    floats: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    buffers: list[bytes] = []
    n_floats = n_code_bits = n_buffer_bytes = 0
    deferred: list[tuple[str, Tensor]] = []  # scales and activation ranges, after the float parameters

    def add_float(name: str, tensor: Tensor) -> None:
        nonlocal n_floats
        if tensor.dtype != torch.float32:
            raise ConfigError(f"packing stores float32 parameters, but {name!r} is {tensor.dtype}")
        values = tensor.detach().cpu().contiguous().numpy().astype("<f4").ravel()
        entries.append({"name": name, "kind": "float32", "shape": list(tensor.shape), "offset": n_floats})
        floats.append(values)
        n_floats += values.size

    for name, tensor in state.items():
        if name in quantized:
            bits = quantized[name]
            module = model.get_submodule(name.rpartition(".")[0])
            assert isinstance(module, QuantMixin)  # `quantized` holds the weights of `quant_layers` only
            q, scale = weight_codes(tensor.float(), bits, module.fixed_weight_scale)
            unsigned = (q + (2 ** (bits - 1) - 1)).cpu().numpy().astype(np.uint32).ravel()
            entries.append({"name": name, "kind": "codes", "shape": list(tensor.shape), "offset": n_code_bits,
                            "bits": bits, "scale": name + _SCALE_SUFFIX})
            codes.append(((unsigned[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8).ravel())
            n_code_bits += unsigned.size * bits
            deferred.append((name + _SCALE_SUFFIX, scale.float()))
        elif name in params:
            add_float(name, tensor)
        elif name.endswith((".act_scale", ".act_zero_point")):
            deferred.append((name, tensor))
        else:
            raw = tensor.detach().cpu().contiguous().numpy()
            data = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
            entries.append({"name": name, "kind": "buffer", "shape": list(tensor.shape), "offset": n_buffer_bytes,
                            "dtype": str(tensor.dtype).removeprefix("torch.")})
            buffers.append(data)
            n_buffer_bytes += len(data)
    for name, tensor in deferred:
        add_float(name, tensor)
    float_bytes = np.concatenate(floats).astype("<f4").tobytes() if floats else b""
    stream = np.packbits(np.concatenate(codes), bitorder="little").tobytes() if codes else b""
    header = {
        "format": FORMAT_VERSION,
        "payload_bytes": len(float_bytes) + len(stream),
        "float_values": n_floats,
        "code_bits": n_code_bits,
        "buffer_bytes": n_buffer_bytes,
        "entries": entries,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + float_bytes + stream + b"".join(buffers)


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of packed ``data`` (its ``payload_bytes`` is the model's stored size).

    Raises:
        CheckpointError: Not packed data of this format, or truncated.
    """
    if len(data) < _PREFIX or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError("not an automl-prune packed model (bad magic bytes)")
    (length,) = struct.unpack("<I", data[len(MAGIC) : _PREFIX])
    try:
        header = json.loads(data[_PREFIX : _PREFIX + length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"packed model has a corrupt header: {exc}") from exc
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"packed model has format {header.get('format')!r}; this version reads {FORMAT_VERSION}")
    if len(data) != _PREFIX + length + header["payload_bytes"] + header["buffer_bytes"]:
        raise CheckpointError("packed model is truncated or has trailing bytes")
    header["header_bytes"] = _PREFIX + length
    return header


def unpack(data: bytes, model: nn.Module) -> nn.Module:
    """Load packed ``data`` into ``model`` (in place; returned), which must have the packed model's structure.

    ``model`` is the base model compressed to the same widths and quantized to the same bits
    (`automl_prune.quantize.fake.compress_and_quantize`). Weights become exactly the fake-quantized weights that were
    packed, and each quantized layer keeps the stored scales (``fixed_weight_scale``), so the rebuilt model's
    outputs are identical to the packed model's.

    Raises:
        CheckpointError: The data is not a packed model, or does not match ``model`` (names, shapes, bits).
    """
    header = read_header(data)
    start = header["header_bytes"]
    float_end = start + 4 * header["float_values"]
    payload_end = start + header["payload_bytes"]
    floats = np.frombuffer(data[start:float_end], dtype="<f4")
    bitstream = np.unpackbits(np.frombuffer(data[float_end:payload_end], dtype=np.uint8), bitorder="little")
    buffer_section = data[payload_end:]
    by_name = {entry["name"]: entry for entry in header["entries"]}

    def read(entry: dict[str, Any]) -> Tensor:
        count = math.prod(entry["shape"])
        if entry["kind"] == "float32":
            values = floats[entry["offset"] : entry["offset"] + count]
            return torch.from_numpy(values.astype(np.float32)).reshape(entry["shape"])
        dtype = getattr(torch, entry["dtype"])
        size = count * torch.empty((), dtype=dtype).element_size()
        if size == 0:
            return torch.empty(entry["shape"], dtype=dtype)
        raw = bytearray(buffer_section[entry["offset"] : entry["offset"] + size])
        return torch.frombuffer(raw, dtype=dtype).reshape(entry["shape"])

    own = model.state_dict()
    quantized = _quantized_weights(model)
    names = [e["name"] for e in header["entries"] if not e["name"].endswith(_SCALE_SUFFIX)]
    if set(names) != set(own):
        missing, unexpected = sorted(set(own) - set(names)), sorted(set(names) - set(own))
        raise CheckpointError(
            f"packed model does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    state: dict[str, Tensor] = {}
    for name in names:
        entry = by_name[name]
        if list(own[name].shape) != entry["shape"]:
            raise CheckpointError(
                f"packed tensor {name!r} has shape {tuple(entry['shape'])}, but the model expects "
                f"{tuple(own[name].shape)}"
            )
        stored_bits = entry.get("bits", FLOAT_BITS)
        if stored_bits != quantized.get(name, FLOAT_BITS):
            raise CheckpointError(
                f"packed tensor {name!r} is stored at {stored_bits} bits, but the model quantizes "
                f"it at {quantized.get(name, FLOAT_BITS)}; rebuild the model with the exported bits"
            )
        if entry["kind"] != "codes":
            state[name] = read(entry)
            continue
        bits, count = entry["bits"], math.prod(entry["shape"])
        segment = bitstream[entry["offset"] : entry["offset"] + count * bits].reshape(count, bits)
        unsigned = segment.astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))
        q = torch.from_numpy(unsigned - (2 ** (bits - 1) - 1)).reshape(entry["shape"])
        scale = read(by_name[entry["scale"]])
        shape = (-1,) + (1,) * (q.dim() - 1)
        state[name] = q.to(torch.float32) * scale.reshape(shape)
        model.get_submodule(name.rpartition(".")[0]).fixed_weight_scale = scale.to(own[name].device)
    model.load_state_dict(state, strict=True)
    return model


def save_packed(path: str | Path, model: nn.Module) -> Path:
    """Write `pack` of ``model`` to ``path`` atomically."""
    return atomic_write(path, pack(model))


def load_packed(path: str | Path, model: nn.Module) -> nn.Module:
    """`unpack` the file at ``path`` into ``model``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"packed model not found: {path}") from exc
    return unpack(data, model)
