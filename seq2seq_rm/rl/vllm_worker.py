"""Code that runs inside vLLM's worker (``LLM(worker_extension_cls=...)``), kept import-light.

vLLM mixes :class:`WeightSync` into its worker class, so its methods can be called with
``llm.collective_rpc("seq2seq_rm_load_weights", args=(data,))`` on every worker (one per
tensor-parallel rank; each loads the full state dict and keeps its own shard).

Why bytes and ``reload_weights``: the weights travel as one safetensors blob, which crosses
vLLM's process boundary (multiprocess engine, tensor-parallel workers) without pickling;
``model_runner.reload_weights`` re-runs vLLM's own loading path (name mapping, q/k/v and
gate/up stacking, kernel re-packing). Calling ``model.load_weights`` directly fails on CPU,
where oneDNN pre-packs the linear weights (design.md, vLLM facts).
"""

from __future__ import annotations


class WeightSync:
    def seq2seq_rm_load_weights(self, data: bytes) -> int:
        """Load a Hugging Face state dict (safetensors bytes, HF parameter names) in place;
        returns how many tensors it held."""
        from safetensors.torch import load

        weights = load(data)
        self.model_runner.reload_weights(weights_iterator=iter(weights.items()))
        return len(weights)
