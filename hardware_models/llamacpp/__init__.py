"""llama.cpp on this machine's CPU, measured (``--hw llamacpp-cpu``, the ``llamacpp`` extra).

The analytic ``llm-decode`` roofline says what a device's bandwidth allows;
this model says what llama.cpp actually does here: seconds per generated token
(``phase=decode``) or per prompt token (``phase=prompt``) of a Llama GGUF as the
GGUF export writes it, on ``threads`` threads in a context of ``context``
tokens, timed through llama-cpp-python.  A layer's cost is looked up in a table
measured once per (tensor shape, GGUF type) on calibration files of the
``model`` option's GGUF (:mod:`.table` says how and why), cached per machine,
thread count, context and llama.cpp build (:mod:`.store`).

Weight bits map to the types the export writes: 2-4 bits are Q4_1, 5 is Q5_1,
6-8 are Q8_0.  Widths that share a type cost the same, since they are the same
file; a search gains latency only by crossing a type boundary.  Activation bits
are accepted and ignored (llama.cpp keeps activations in float).  The model
measures on first use (a few minutes for a 135M model on two cores), not when
created, so ``hw show`` and option checks stay instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

from haq_plugin import HaqError, HardwareModel, LayerCost, LayerSpec, Option, hookimpl
from haq_plugin.adapters.groupwise.gguf_types import WRITTEN_TYPES
from haq_plugin.hardware_models.llamacpp.extra import missing_extra, usable_cpus
from haq_plugin.hardware_models.llamacpp.timing import Protocol
from haq_plugin.hardware_models.llamacpp.variants import shape_label

DEFAULT_MODEL = "llm:smollm2-135m"
CITATION = ("measured with llama.cpp's CPU backend (G. Gerganov et al., ggml / llama.cpp, "
            "https://github.com/ggml-org/llama.cpp) through llama-cpp-python (A. Betlen); "
            "medians of interleaved runs at fixed threads")


def _options() -> tuple[Option, ...]:
    return (
        Option("model", str, DEFAULT_MODEL, "the Llama GGUF whose calibration files are timed (gguf:FILE or "
               "llm:NAME): the model you search", source="the embedded SmolLM2-135M-Instruct"),
        Option("threads", int, None, "llama.cpp threads for prompt and decode (none: every CPU this process "
               "may use)", minimum=1, source="fixed, so that figures are comparable"),
        Option("context", int, 512, "context size (KV cache) in tokens", minimum=8, source="a short chat"),
        Option("prompt_tokens", int, 64, "prompt processed in one batch before decoding; its time per token is "
               "phase=prompt", minimum=1, source="a short prompt"),
        Option("decode_tokens", int, 32, "tokens generated one at a time per run (phase=decode)", minimum=1,
               source="enough single steps for a stable median"),
        Option("repeats", int, 5, "interleaved rounds over the calibration files (medians over them)",
               minimum=1, source="5: medians robust to a busy machine"),
        Option("phase", str, "decode", "latency = seconds per generated token (decode) or per prompt token "
               "(prompt)", choices=("decode", "prompt"),
               source="decode: what a chat waits for per token (validated, RESULTS.md section 12); prompt "
                      "figures are paired per round only and noisier"),
    )


class LlamaCppCPU(HardwareModel):
    """Per-token seconds of a decoder tensor in llama.cpp on this CPU, looked up by (shape, GGUF type)."""

    name: ClassVar[str] = "llamacpp-cpu"
    description: ClassVar[str] = ("llama.cpp on this machine's CPU (llama-cpp-python): measured seconds per "
                                  "decoded or prompt token, per tensor shape and GGUF type (Q4_1, Q5_1, Q8_0)")
    citation: ClassVar[str] = CITATION
    has_energy: ClassVar[bool] = False
    options: ClassVar[tuple[Option, ...]] = _options()
    supported_bits: ClassVar[tuple[int, ...]] = tuple(sorted(WRITTEN_TYPES))  # type: ignore[assignment]

    @classmethod
    def unavailable(cls) -> str | None:
        return missing_extra()

    def setup(self) -> None:
        c = self.config
        self.protocol = Protocol(threads=c["threads"] or usable_cpus(), context=c["context"],
                                 prompt_tokens=c["prompt_tokens"], decode_tokens=c["decode_tokens"],
                                 repeats=c["repeats"])
        self.protocol.check()
        self._source: Path | None = None
        self._table: Any = None

    def source(self) -> Path:
        """The calibration GGUF (fetched and extracted on first use for ``llm:NAME``)."""
        if self._source is None:
            from haq_plugin.tasks.llm.sources import gguf_file_of

            spec = self.config["model"]
            if not spec.startswith(("gguf:", "llm:")):
                raise HaqError(f"hardware model 'llamacpp-cpu': model={spec!r} must be gguf:FILE or llm:NAME.")
            self._source = gguf_file_of(spec)
        return self._source

    def table(self, use_cache: bool = True) -> Any:
        """The measured :class:`~.table.LookupTable` (measured on first use, then cached on disk)."""
        if self._table is None:
            from haq_plugin.hardware_models.llamacpp.store import load_or_measure

            self._table = load_or_measure(self.source(), self.protocol, use_cache)
        return self._table

    def environment(self) -> dict[str, Any]:
        from haq_plugin.hardware_models.llamacpp.store import table_key

        return table_key(self.source(), self.protocol)

    def layer_cost(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> LayerCost:
        return self.layer_costs(layer, [(weight_bits, act_bits)])[0]

    def layer_costs(self, layer: LayerSpec, bit_pairs: Sequence[tuple[int, int]]) -> list[LayerCost]:
        """One lookup per weight width: activation bits do not change the cost."""
        for w, a in bit_pairs:
            self.check_bits(w, a, layer=layer.name)
        if layer.kind != "linear":
            raise HaqError(f"hardware model 'llamacpp-cpu' costs the linears of a language model; layer "
                           f"'{layer.name}' is a {layer.kind}.")
        by_width = {int(w): self._cost(layer, int(w)) for w in {w for w, _ in bit_pairs}}
        return [by_width[int(w)] for w, _ in bit_pairs]

    def _cost(self, layer: LayerSpec, weight_bits: int) -> LayerCost:
        table, qtype = self.table(), WRITTEN_TYPES[weight_bits]
        shape = (layer.out_channels, layer.in_channels)
        seconds = {phase: table.cost(phase, shape, qtype) for phase in ("decode", "prompt")}
        phase = self.config["phase"]
        return LayerCost(latency_s=seconds[phase],
                         details={"gguf_type": qtype, "decode_s": seconds["decode"], "prompt_s": seconds["prompt"],
                                  "floored": table.floored(phase, shape_label(shape), qtype)})


@hookimpl
def haq_hardware_models() -> list[type[HardwareModel]]:
    return [LlamaCppCPU]
