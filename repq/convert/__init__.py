"""Import official PyTorch checkpoints (RepVGG, ACNet, OREPA, ECBSR, torchvision
ResNet-18 / MobileNetV2) into repq models; see ``docs/convert.md``.

* ``load_torch_state_dict(model_or_layer, state_dict)``: in place, from arrays.
* ``from_torch_checkpoint(model_name, path)``: build the model and load a file.
* ``python -m repq.convert --model ... --torch_checkpoint ... --output x.keras``.
"""

from repq.convert.api import from_torch_checkpoint, load_torch_state_dict
from repq.convert.files import read_state_dict

__all__ = ["from_torch_checkpoint", "load_torch_state_dict", "read_state_dict"]
