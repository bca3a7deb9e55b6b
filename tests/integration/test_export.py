"""``esper export`` and ``esper.load_model``: a grown network as a plain PyTorch model
whose outputs are the run's final model's."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import esper
from esper.cli import main
from esper.lifecycle import BlendAlgorithm, SeedStage
from esper.model import MorphogeneticModel, build_host
from esper.model.export import ExportError, GrownNetwork, export_network
from esper.run import read_config
from esper.rundir import CHECKPOINT, read_checkpoint
from esper.training.builders import build_episode
from tests.commands import GROWS_EARLY, error_line
from tests.seeds import walk_to


def test_an_exported_run_is_a_plain_module_with_the_runs_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["--epochs", "12", "--config", str(GROWS_EARLY), "--out", str(run), "--quiet"]
    assert main(["heuristic", *flags]) == 0
    assert main(["export", str(run)]) == 0
    data = torch.load(run / "network.pt", weights_only=True)  # plain data and tensors
    assert data["slots"], "the run kept seeds: they are in the network"
    network = esper.load_model(run / "network.pt")
    assert isinstance(network, GrownNetwork)
    assert not any(type(m).__name__ in ("SeedSlot", "WidthSeed") for m in network.modules())
    runner = build_episode(read_config(run))
    runner.load_state_dict(read_checkpoint(run / CHECKPOINT).state["runner"])
    runner.model.eval()
    with torch.no_grad():
        test = runner.data.test_batches()
        assert test is not None
        for inputs, _ in [*runner.data.val_batches(), *test]:
            expected = runner.model(inputs)
            torch.testing.assert_close(network(inputs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blend", [BlendAlgorithm.LINEAR, BlendAlgorithm.GATED])
def test_merged_and_live_width_seeds_and_depth_seeds_export_exactly(
    tmp_path: Path, blend: BlendAlgorithm
) -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(build_host("cnn_digits", in_channels=1, widths=(2, 4, 8)))
    model.germinate_seed("width_100", "w1", slot="r0c0")  # kept: merged into the host
    walk_to(model, "r0c0", SeedStage.PROBATIONARY)
    model.slot("r0c0").record(contribution=5.0, contribution_se=0.5)
    assert model.fossilize_seed("r0c0").passed
    model.germinate_seed("conv_heavy", "d1", slot="r0c1", blend=blend)  # blending, depth
    walk_to(model, "r0c1", SeedStage.BLENDING, step=2)
    model.germinate_seed("width_50", "w2", slot="r0c2")  # blending, width
    walk_to(model, "r0c2", SeedStage.BLENDING, step=1)
    model.eval()
    path = tmp_path / "network.pt"
    torch.save(export_network(model, "cnn_digits", {"in_channels": 1, "widths": (2, 4, 8)}), path)
    network = esper.load_model(path)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(network(x), model(x), rtol=1e-5, atol=1e-6)
        assert not torch.equal(network(x), copy.deepcopy(network).host(x))  # seeds count


def test_a_file_that_is_not_an_exported_network_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a network")
    with pytest.raises(ExportError, match="is not a network 'esper export' wrote"):
        esper.load_model(garbage)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ExportError, match="is not a network"):
        esper.load_model(tmp_path / "other.pt")
    assert main(["export", str(tmp_path)]) == 2
    assert "not a run directory" in error_line(capsys)
