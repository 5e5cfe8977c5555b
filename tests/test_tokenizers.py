"""Tokenizers: the argmax against a brute-force loop, determinism by seed, state round-trip, pictures."""

import math

import pytest
import torch

from dino_lite.tokenizers import (KINDS, Tokenizer, build_tokenizer, codebook_figure, codebook_image,
                                  patchify, redraw, spherical_kmeans, unpatchify)


class Images(torch.utils.data.Dataset):
    """Random 'normalised images' with labels, as build_dataset returns them."""
    def __init__(self, n=40, size=16, seed=0):
        self.x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def test_patchify_matches_a_loop_and_unpatchify_inverts_it():
    img = torch.randn(2, 3, 8, 12)
    p = 4
    patches = patchify(img, p)
    assert patches.shape == (2, 6, 48)
    k = 0
    for r in range(2):
        for c in range(3):
            assert torch.equal(patches[1, k], img[1, :, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(-1))
            k += 1
    assert torch.equal(unpatchify(patches, p, (2, 3)), img)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_are_the_argmax_of_a_brute_force_loop(kind):
    tok = build_tokenizer(kind, 32, 4, seed=0, dataset=Images())
    images = torch.randn(2, 3, 8, 8)
    ids = tok(images)
    assert ids.shape == (2, 4) and ids.dtype == torch.long
    book = tok.codebook.tolist()
    for b in range(2):
        for k, patch in enumerate(patchify(images, 4)[b]):
            norm = math.sqrt(sum(v * v for v in patch.tolist()))
            x = [v / norm for v in patch.tolist()]
            scores = [sum(a * e for a, e in zip(x, word)) for word in book]
            assert ids[b, k].item() == max(range(len(book)), key=scores.__getitem__)


@pytest.mark.parametrize("kind", KINDS)
def test_codebook_is_unit_vectors_and_deterministic_by_seed(kind):
    a = build_tokenizer(kind, 16, 4, seed=3, dataset=Images())
    b = build_tokenizer(kind, 16, 4, seed=3, dataset=Images())
    c = build_tokenizer(kind, 16, 4, seed=4, dataset=Images())
    assert torch.allclose(a.codebook.norm(dim=1), torch.ones(16))
    assert torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.codebook, c.codebook)


def test_random_patches_are_training_patches():
    data = Images()
    tok = build_tokenizer("random_patches", 16, 4, seed=0, dataset=data)
    every = torch.nn.functional.normalize(patchify(data.x, 4).flatten(0, 1), dim=-1)
    for word in tok.codebook:
        assert (every - word).abs().amax(1).min() < 1e-6


def test_kmeans_does_not_increase_the_spherical_objective():
    x = torch.nn.functional.normalize(torch.randn(300, 12, generator=torch.Generator().manual_seed(0)), dim=-1)
    start = x[:8].clone()
    def score(c):
        return (x @ c.T).max(1).values.sum()
    assert score(spherical_kmeans(x, start, 10)) >= score(start) - 1e-4


def test_state_dict_round_trip():
    a = build_tokenizer("kmeans", 16, 4, seed=1, dataset=Images())
    b = Tokenizer(16, 4, "kmeans")
    b.load_state_dict(a.state_dict())
    images = torch.randn(3, 3, 8, 8)
    assert torch.equal(a(images), b(images))


def test_bad_tokenizer_arguments_are_rejected():
    with pytest.raises(ValueError, match="tokenizer must be"):
        Tokenizer(16, 4, "dvae")
    with pytest.raises(ValueError, match="needs training images"):
        build_tokenizer("kmeans", 16, 4, seed=0)
    with pytest.raises(ValueError, match="at least vocab_size"):
        build_tokenizer("random_patches", 4096, 4, seed=0, dataset=Images(n=2))


def test_pictures_have_the_expected_shapes():
    tok = build_tokenizer("random_patches", 16, 4, seed=0, dataset=Images())
    img = codebook_image(tok, n=16, cols=4)
    assert img.shape == (4 * 5 - 1, 4 * 5 - 1, 3) and 0 <= img.min() and img.max() <= 1
    again = redraw(tok, torch.randn(3, 8, 8))
    assert again.shape == (8, 8, 3)
    fig = codebook_figure(tok, torch.randn(3, 8, 8))
    assert len(fig.axes) == 3
