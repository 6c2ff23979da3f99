"""Models with several inputs: which input an explain call's maps cover.

An Explainer covers one input (Model.input_name); a call on a model with several inputs is
routed to the Explainer of the input its maps cover (Explainer.for_input), which feeds the
other inputs as given (onnx_cam.side_inputs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError, LayerError

if TYPE_CHECKING:
    from .explainer import Explainer
    from .model import Model


def explained_input(explainer: Explainer, input: str | None = None, layers="auto") -> str:
    """The input the maps cover: input= if given, else the Explainer's, else the only
    spatial input the named layers are computed from."""
    model = explainer.model
    spatial = list(model.spatial_inputs)
    names = [layers] if isinstance(layers, str) else list(layers or ["auto"])
    if input is not None or model.input_chosen:
        chosen = explainer.for_input(input or model.input_name)
        for name in names:
            if name != "auto" and not has_layer(chosen.model, name):
                found = [i for i in spatial if has_layer(explainer.for_input(i).model, name)]
                if found:
                    raise InputError(
                        f"Layer {name!r} is computed from the input(s) {found}, not from "
                        f"{chosen.model.input_name!r} whose spatial axes the maps cover; "
                        f"pass input={found[0]!r} or name a layer of that input.")
        return chosen.model.input_name
    owners: set[str] = set()
    for name in names:
        if name == "auto":
            raise InputError(
                f"The model has several spatial inputs {spatial}: pass input=... (one of "
                "them) to say which the maps cover, or name the layers to explain.")
        found = [i for i in spatial if has_layer(explainer.for_input(i).model, name)]
        if len(found) > 1:
            raise InputError(
                f"Layer {name!r} is computed from the inputs {found}: pass input=... (one "
                "of them) to say whose spatial axes the maps cover.")
        owners.update(found)  # none: the LayerError of resolving it names the problem
    if len(owners) > 1:
        raise InputError(f"Layers {names} are computed from different inputs "
                         f"{sorted(owners)}: explain each input's layers in a call of "
                         "its own.")
    return owners.pop() if owners else model.input_name


def has_layer(model: Model, name: str) -> bool:
    """Whether `name` names a candidate layer of `model`."""
    try:
        model.resolve_layer(name)
    except LayerError:
        return False
    return True
