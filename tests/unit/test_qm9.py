"""QM9 benchmark: PyG's on-disk layout, split, target scaling, MAE units, MPNN, errors."""

import pytest
import torch
import torch_geometric.datasets.qm9 as pyg_qm9
from torch_geometric.datasets import QM9

from mtrl.supervised.data.errors import DatasetNotFound
from mtrl.supervised.benchmarks.qm9 import QM9Benchmark
from mtrl.supervised.testing import write_qm9

N_MOLECULES = 40
SPLIT = (8, 8)
DEFAULT_TASKS = ["mu", "alpha", "homo", "lumo", "r2", "zpve", "u0_atom", "u_atom", "h_atom",
                 "g_atom", "cv"]
# eV -> meV at positions 2, 3, 5, 6, 7, 8, 9 of the 11 targets
MEV_SCALE = torch.tensor([1, 1, 1000, 1000, 1, 1000, 1000, 1000, 1000, 1000, 1.0])


@pytest.fixture(scope="module")
def qm9_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("qm9")
    molecules = write_qm9(root, N_MOLECULES, seed=0)
    return root, molecules


@pytest.fixture(scope="module")
def bench(qm9_root):
    return QM9Benchmark(qm9_root[0], seed=0, split_sizes=SPLIT)


def whole_split(bench, split):
    return next(iter(bench.loader(split, batch_size=N_MOLECULES, shuffle=False)))


def raw_targets(molecules, idx, targets=(0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)):
    return torch.cat([molecules[int(i)]["y"] for i in idx])[:, list(targets)]


def test_generated_layout_loads_through_pyg_qm9(qm9_root):
    root, molecules = qm9_root
    dataset = QM9(str(root))
    assert len(dataset) == N_MOLECULES
    for i in (0, 17, N_MOLECULES - 1):
        data = dataset[i]
        for key in ("x", "edge_index", "edge_attr", "y", "pos", "z"):
            assert torch.equal(data[key], molecules[i][key])
        assert data.x.shape[1] == 11 and data.y.shape == (1, 19)
        assert data.name == f"gdb_{i + 1}"


def test_transformed_graph_is_complete_with_bond_one_hot_and_distance(bench, qm9_root):
    molecules = qm9_root[1]
    batch = whole_split(bench, "train")
    assert batch.edge_attr.shape[1] == 5
    for g in range(batch.num_graphs):
        data, mol = batch.get_example(g), molecules[int(batch.idx[g])]
        n = data.num_nodes
        pairs = {(int(i), int(j)) for i, j in data.edge_index.t()}
        assert pairs == {(i, j) for i in range(n) for j in range(n) if i != j}
        bonds = {(int(i), int(j)): a for (i, j), a in zip(mol["edge_index"].t(), mol["edge_attr"])}
        for (i, j), attr in zip(data.edge_index.t().tolist(), data.edge_attr):
            expected = bonds.get((i, j), torch.zeros(4))
            assert torch.equal(attr[:4], expected)
            assert attr[4] == pytest.approx(float((mol["pos"][j] - mol["pos"][i]).norm()), rel=1e-5)


def split_ids(bench):
    return {s: whole_split(bench, s).idx.tolist() for s in bench.splits}


def test_split_sizes_cover_all_molecules_and_depend_only_on_seed(bench, qm9_root):
    ids = split_ids(bench)
    assert [len(ids[s]) for s in ("test", "val", "train")] == [8, 8, N_MOLECULES - 16]
    assert sorted(ids["test"] + ids["val"] + ids["train"]) == list(range(N_MOLECULES))
    assert split_ids(QM9Benchmark(qm9_root[0], seed=0, split_sizes=SPLIT)) == ids
    other = split_ids(QM9Benchmark(qm9_root[0], seed=1, split_sizes=SPLIT))
    assert set(other["test"]) != set(ids["test"])


def test_shuffled_loader_order_follows_its_seed(bench):
    def order(seed):
        return [i for b in bench.loader("train", 5, shuffle=True, seed=seed) for i in b.idx.tolist()]
    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == sorted(whole_split(bench, "train").idx.tolist())


def test_targets_are_z_scored_with_training_statistics(bench, qm9_root):
    molecules = qm9_root[1]
    train = whole_split(bench, "train")
    torch.testing.assert_close(train.y.mean(0), torch.zeros(11), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.y.std(0), torch.ones(11), atol=1e-5, rtol=0)
    raw_train = raw_targets(molecules, train.idx).double()
    torch.testing.assert_close(bench.target_mean, raw_train.mean(0).float())
    torch.testing.assert_close(bench.target_std, raw_train.std(0).float())
    test = whole_split(bench, "test")      # other splits use the training statistics too
    raw_test = raw_targets(molecules, test.idx)
    torch.testing.assert_close(test.y, (raw_test - bench.target_mean) / bench.target_std)
    torch.testing.assert_close(bench.denormalise(test.y), raw_test, rtol=1e-5, atol=1e-3)


def test_mae_is_in_original_units_with_energies_in_mev(bench, qm9_root):
    molecules = qm9_root[1]
    offsets = 0.1 * torch.arange(1, 12, dtype=torch.float32)
    state = bench.metric_state()
    predictions = []
    for batch in bench.loader("val", batch_size=3, shuffle=False):
        outputs = [(batch.y[:, t] + offsets[t] * (-1) ** t)[:, None] for t in range(11)]
        state.update(outputs, batch)
        predictions.append((torch.cat(outputs, 1), batch.idx))
    mae = state.compute()
    assert list(mae) == [f"{t}_mae" for t in DEFAULT_TASKS]
    # hand check: |offset| in scaled units is |offset| * std in PyG units, x1000 where in eV
    expected = offsets * bench.target_std * MEV_SCALE
    torch.testing.assert_close(torch.tensor(list(mae.values()), dtype=torch.float32), expected)
    # the same from de-normalised predictions against the raw targets on disk
    pred = torch.cat([bench.denormalise(p) for p, _ in predictions])
    raw = raw_targets(molecules, torch.cat([i for _, i in predictions]))
    from_raw = (pred - raw).abs().mean(0) * MEV_SCALE
    torch.testing.assert_close(torch.tensor(list(mae.values()), dtype=torch.float32), from_raw,
                               rtol=1e-3, atol=1e-3)


def test_custom_target_order_names_tasks_and_scales_by_unit(qm9_root):
    bench = QM9Benchmark(qm9_root[0], targets=(11, 2, 0), split_sizes=SPLIT)
    assert bench.tasks == ["cv", "homo", "mu"]
    assert [(m.name, m.task, m.baseline) for m in bench.metrics] == [
        ("cv_mae", "cv", 0.07212), ("homo_mae", "homo", 60.576), ("mu_mae", "mu", 0.0671)]
    batch = whole_split(bench, "test")
    state = bench.metric_state()
    state.update([batch.y[:, t:t + 1] + 1.0 for t in range(3)], batch)
    got = torch.tensor(list(state.compute().values()), dtype=torch.float32)
    torch.testing.assert_close(got, bench.target_std * torch.tensor([1.0, 1000.0, 1.0]))


def test_benchmark_description(bench):
    assert bench.name == "qm9" and bench.selection_split == "val"
    assert bench.tasks == DEFAULT_TASKS and bench.num_tasks == 11
    assert [m.name for m in bench.metrics] == [f"{t}_mae" for t in DEFAULT_TASKS]
    assert [m.task for m in bench.metrics] == DEFAULT_TASKS
    assert not any(m.higher_is_better for m in bench.metrics)
    assert [m.baseline for m in bench.metrics] == [0.0671, 0.1814, 60.576, 53.915, 0.5027, 4.539,
                                                   58.838, 64.244, 63.852, 66.223, 0.07212]


def test_model_shapes_and_encoder_head_split(bench):
    torch.manual_seed(0)
    model = bench.build_model()
    batch = whole_split(bench, "test")
    z = model.encode(bench.inputs(batch))
    assert z.shape == (batch.num_graphs, 64)
    outputs = model(bench.inputs(batch))
    assert len(outputs) == 11 and all(o.shape == (batch.num_graphs, 1) for o in outputs)
    assert bench.task_losses(outputs, batch).shape == (11,)
    shared = {id(p) for p in model.shared_parameters()}
    heads = {id(p) for p in model.task_parameters()}
    assert not shared & heads and shared | heads == {id(p) for p in model.parameters()}
    assert sum(p.numel() for p in model.task_parameters()) == 11 * (64 + 1)
    edge_net = model.encoder["conv"].nn
    assert edge_net[0].in_features == 5 and edge_net[-1].out_features == 64 * 64


def test_losses_are_per_target_mse_on_scaled_targets(bench):
    batch = whole_split(bench, "val")
    outputs = [torch.full((batch.num_graphs, 1), 0.5) for _ in range(11)]
    expected = ((batch.y - 0.5) ** 2).mean(0)
    torch.testing.assert_close(bench.task_losses(outputs, batch), expected)


def test_a_few_adam_steps_reduce_the_summed_loss(qm9_root):
    bench = QM9Benchmark(qm9_root[0], split_sizes=SPLIT, hidden=16)
    torch.manual_seed(0)
    model = bench.build_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = whole_split(bench, "train")
    losses = []
    for _ in range(10):
        loss = bench.task_losses(model(bench.inputs(batch)), batch).sum()
        optimiser.zero_grad()
        loss.backward()
        if not losses:     # every parameter, shared or not, gets a gradient
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("make_root", [False, True])
def test_missing_data_raises_dataset_not_found_without_downloading(tmp_path, monkeypatch, make_root):
    def no_download(*args, **kwargs):
        raise AssertionError("QM9 tried to download")
    monkeypatch.setattr(pyg_qm9, "download_url", no_download)
    root = tmp_path / "qm9"
    if make_root:
        root.mkdir()
    with pytest.raises(DatasetNotFound) as info:
        QM9Benchmark(str(root))
    message = str(info.value)
    assert "\n" not in message
    assert str(root / "raw" / "qm9_v3.pt") in message and "qm9_v3.zip" in message
    assert root.exists() == make_root and not (root / "raw").exists()


def test_bad_arguments_raise_value_error(bench, qm9_root):
    root = qm9_root[0]
    with pytest.raises(ValueError, match="STL baseline"):
        QM9Benchmark(root, targets=(0, 4), split_sizes=SPLIT)
    with pytest.raises(ValueError, match="distinct"):
        QM9Benchmark(root, targets=(0, 0), split_sizes=SPLIT)
    with pytest.raises(ValueError, match="smaller sizes"):
        QM9Benchmark(root, split_sizes=(20, 19))
    with pytest.raises(ValueError, match="positive"):
        QM9Benchmark(root, split_sizes=(0, 8))
    with pytest.raises(ValueError, match="choose from"):
        bench.loader("validation", 4, shuffle=False)
    with pytest.raises(ValueError, match="update"):
        bench.metric_state().compute()
