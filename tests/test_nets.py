import pytest
import torch

from hybridrs.models import nets


def _toy(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.2
    # a class-dependent bright row makes the task learnable
    for c in range(10):
        x[y == c, 0, 2 * c + 3, 5:23] = 1.0
    return x, y


def test_cnn_shapes():
    torch.manual_seed(0)
    out = nets.mnist_cnn(width=4)(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_train_is_deterministic_and_learns():
    x, y = _toy()
    torch.manual_seed(1)
    m1 = nets.mnist_cnn(width=4)
    torch.manual_seed(1)
    m2 = nets.mnist_cnn(width=4)
    acc0 = nets.accuracy(m1, x, y)
    nets.train(m1, x, y, epochs=10, batch_size=64, lr=1e-2, noise_sigma=0.1, seed=5)
    nets.train(m2, x, y, epochs=10, batch_size=64, lr=1e-2, noise_sigma=0.1, seed=5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    acc = nets.accuracy(m1, x, y)
    assert acc > 0.8 > acc0 + 0.5
    assert not m1.training


def test_noise_changes_training():
    x, y = _toy()
    torch.manual_seed(1)
    m1 = nets.train(nets.mnist_cnn(width=4), x, y, epochs=1, seed=0)
    torch.manual_seed(1)
    m2 = nets.train(nets.mnist_cnn(width=4), x, y, epochs=1, seed=0, noise_sigma=0.5)
    assert any(not torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_accuracy_counts():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x.flatten(1)[:, 0].long(), 10).float()

    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1)
    y = torch.tensor([0, 1, 5, 3])
    assert nets.accuracy(Fixed(), x, y) == pytest.approx(0.75)
    assert nets.accuracy(Fixed(), x, y, batch_size=3) == pytest.approx(0.75)


@pytest.mark.parametrize("kwargs, name", [({"epochs": 0}, "epochs"), ({"epochs": 1, "noise_sigma": -1.0}, "noise_sigma"),
                                          ({"epochs": 1, "lr": float("nan")}, "lr"), ({"epochs": 1, "batch_size": 0}, "batch_size")])
def test_train_bad_input(kwargs, name):
    x, y = _toy(16)
    with pytest.raises(ValueError, match=name):
        nets.train(nets.mnist_cnn(width=2), x, y, **kwargs)


def test_bad_data():
    x, y = _toy(16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        nets.accuracy(nets.mnist_cnn(width=2), x, y)
    with pytest.raises(ValueError):
        nets.mnist_cnn(width=0)
