"""The growable model: hosts, blueprints, slots and the model that ties them together."""

from esper.model.blueprints import BLUEPRINTS, BlueprintSpec, blueprint_names, get_blueprint
from esper.model.hosts import HOSTS, CNNHost, Host, InjectionPoint, TransformerHost, build_host
from esper.model.morphogenetic import MorphogeneticModel
from esper.model.slot import SeedSlot

__all__ = [
    "BLUEPRINTS",
    "HOSTS",
    "BlueprintSpec",
    "CNNHost",
    "Host",
    "InjectionPoint",
    "MorphogeneticModel",
    "SeedSlot",
    "TransformerHost",
    "blueprint_names",
    "build_host",
    "get_blueprint",
]
