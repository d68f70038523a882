"""The PPO critic: a transformer backbone with a scalar value head on every position.

Initialised from the SFT policy (default) or from the reward model (``critic_init=rm``;
a scalar RM's score head then also initialises the value head). Saved as a normal
backbone folder plus ``value_head.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelError
from .loading import load_backbone

HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """``forward(input_ids, attention_mask, position_ids) -> values (B, L)``: V(s) after each prefix."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)  # start from V = 0: no made-up value estimates at step 0
        nn.init.zeros_(self.v_head.bias)

    @property
    def config(self):
        return self.backbone.config

    @classmethod
    def from_folder(cls, path: str | Path, trust_remote_code: bool = False, dtype="float32") -> ValueModel:
        """From a policy / RM folder (fresh head, or a scalar RM's score head) or a saved critic.

        ``dtype`` is the backbone's storage dtype; the value head always stays float32 (it is trained,
        and a (1, H) head costs nothing)."""
        path = Path(path)
        model = cls(load_backbone(str(path), trust_remote_code=trust_remote_code, dtype=dtype))
        if (path / HEAD_FILE).is_file():
            model.v_head.load_state_dict(load_file(str(path / HEAD_FILE)))
        else:
            score = _score_head(path)
            if score is not None:
                with torch.no_grad():
                    model.v_head.weight.copy_(score)
        return model

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        # A bfloat16 backbone feeds the float32 head: cast up (a no-op in float32, and under autocast).
        return self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        self.backbone.save_pretrained(out_dir)
        save_file({k: v.contiguous() for k, v in self.v_head.state_dict().items()}, str(out_dir / HEAD_FILE))


def _score_head(path: Path) -> torch.Tensor | None:
    """A scalar RM's ``score.weight`` (1, H), if ``path`` holds one."""
    f = path / "model.safetensors"
    if not f.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            return st.get_tensor("score.weight") if "score.weight" in st.keys() else None
    except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing model error
        raise ModelError(f"{f}: cannot read weights: {e}") from e
