"""Public API validation (issue 16): what a person passes wrong gets a message naming the
parameter, what was expected and what was given — never a PyTorch internal error."""
import pytest
import torch

import parl_core as pc


@pytest.fixture(scope="module")
def digits():
    ens, _ = pc.load_checkpoint("checkpoints/digits_ens_u.safetensors")
    return ens, torch.rand(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])


@pytest.mark.parametrize("call,match", [
    (lambda e, x, y: pc.attack("pgd", e, torch.rand(4, 3, 8, 8), y, 0.1), r"x must have 1 channels \(the model's\), got shape \(4, 3, 8, 8\)"),
    (lambda e, x, y: pc.attack("fgsm", e, x.double(), y, 0.1), r"x must have the model's dtype torch.float32, got torch.float64"),
    (lambda e, x, y: pc.attack("fgsm", e, (x * 255).to(torch.uint8), y, 0.1), r"x must be a floating-point tensor"),
    (lambda e, x, y: pc.attack("fgsm", e, x, torch.tensor([1, 2, 3, 40]), 0.1), r"y must hold labels in 0..9 \(the model's 10 classes\), got values in 1..40"),
    (lambda e, x, y: pc.attack("fgsm", e, x, y.float(), 0.1), r"y must be an integer tensor"),
    (lambda e, x, y: pc.parl_loss(e, x, y, gamma2=float("nan"), layers=2), r"gamma2 must be a finite number, got nan"),
    (lambda e, x, y: pc.parl_loss(e, x.double(), y, layers=2), r"x must have the model's dtype"),
])
def test_inputs_are_checked_against_the_model(digits, call, match):
    with pytest.raises(ValueError, match=match):
        call(*digits)


def test_devices_sizes_and_hyperparameters():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda', but no CUDA GPU is available"):
            pc.load_checkpoint("checkpoints/digits_ens_u.safetensors", device="cuda")
    with pytest.raises(ValueError, match=r"device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        pc.load_checkpoint("checkpoints/digits_ens_u.safetensors", device="gpu0")
    with pytest.raises(ValueError, match=r"width must be an int >= 1, got -3"):
        pc.build_model("smallcnn", 10, 1, width=-3)
    with pytest.raises(ValueError, match=r"depth must be an int >= 1, got 0"):
        pc.build_model("mlp", 2, 2, depth=0)
    train = pc.load_dataset("digits", "train").subset(64, seed=0)
    ens = pc.build_ensemble("smallcnn", 2, train, seed=0, width=3)
    with pytest.raises(ValueError, match=r"lr must be a finite number, got inf"):
        pc.train(ens, train, None, epochs=1, lr=float("inf"))
