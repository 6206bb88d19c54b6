"""ConvEncoder (net.conv): image observations through convolutions, in either channel layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtdqn.models.mlp_grads import ExplicitMLPGrads
from mtdqn.nets.q import ConvEncoder, QNetwork

MINATAR = [[16, 3, 1]]
NATURE = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]


def test_output_is_the_convolution_of_the_unflattened_image():
    """A flat (H, W, C) observation is reshaped, moved to channels-first and convolved: the same numbers as
    F.conv2d + ReLU on the image itself."""
    enc = ConvEncoder((10, 10, 4), MINATAR)
    image = torch.rand(5, 10, 10, 4)
    conv = enc.convs[0]
    expected = F.relu(F.conv2d(image.permute(0, 3, 1, 2), conv.weight, conv.bias)).flatten(1)
    assert enc.channels_last and enc.image_shape == (4, 10, 10) and enc.out_dim == 16 * 8 * 8
    torch.testing.assert_close(enc(image.reshape(5, -1)), expected)


def test_channel_layouts_read_the_same_image():
    """The smallest dimension is the channel one (Stable-Baselines3's rule): (C, H, W) and (H, W, C) versions of
    one image give the same features with the same weights; (H, W) is one channel."""
    first, last = ConvEncoder((4, 10, 10), MINATAR), ConvEncoder((10, 10, 4), MINATAR)
    last.load_state_dict(first.state_dict())
    image = torch.rand(3, 4, 10, 10)
    assert not first.channels_last and last.channels_last
    torch.testing.assert_close(first(image.reshape(3, -1)), last(image.permute(0, 2, 3, 1).reshape(3, -1)))
    gray = ConvEncoder((10, 10), MINATAR)
    assert gray.image_shape == (1, 10, 10) and gray(torch.rand(2, 100)).shape == (2, 16 * 8 * 8)


def test_nature_dqn_shapes_and_any_leading_dimensions():
    """Four stacked 84x84 frames through the Nature DQN's convolutions: 64 x 7 x 7 features; a round's (G, B, D)
    batch keeps its leading dimensions."""
    enc = ConvEncoder((4, 84, 84), NATURE)
    assert enc.out_dim == 3136
    assert enc(torch.rand(2, 3, 4 * 84 * 84)).shape == (2, 3, 3136)


@pytest.mark.parametrize(("shape", "layers", "message"), [
    (None, MINATAR, "needs image observations"),
    ((8,), MINATAR, "needs image observations"),
    ((10, 10, 4), [[16, 3]], "[out_channels, kernel, stride]"),
    ((10, 10, 4), [[16, 0, 1]], "[out_channels, kernel, stride]"),
    ((10, 10, 4), [], "non-empty"),
    ((10, 10, 4), [[16, 12, 1]], "a 12x12 kernel does not fit the 10x10 feature map"),
    ((10, 10, 4), NATURE, "a 4x4 kernel does not fit the 1x1 feature map"),  # Nature's network needs Atari's 84x84
])
def test_bad_settings_are_refused_with_the_key(shape, layers, message):
    with pytest.raises(ValueError, match="net.conv") as err:
        ConvEncoder(shape, layers)
    assert message in str(err.value)


def test_q_network_with_conv_trains_through_the_encoder():
    """QNetwork(conv=...) puts the encoder before the MLP torso; its gradients reach the convolution; the hand-
    written gradient path takes one convolution (PatchConv), not several."""
    net = QNetwork(400, 3, hidden=[128], conv=MINATAR, obs_shape=(10, 10, 4))
    q = net(torch.rand(6, 400))
    assert q.shape == (6, 3) and net.torso[0].in_features == 16 * 8 * 8
    q.sum().backward()
    assert net.encoder.convs[0].weight.grad.abs().sum() > 0
    assert ExplicitMLPGrads.supports(net)
    assert not ExplicitMLPGrads.supports(QNetwork(400, 3, hidden=[128], conv=[[16, 3, 1], [8, 3, 1]],
                                                  obs_shape=(10, 10, 4)))
    assert ExplicitMLPGrads.supports(QNetwork(400, 3, hidden=[128], obs_shape=(10, 10, 4)))  # conv=None: an MLP


def test_gym_task_spec_keeps_image_shapes():
    """The gym adapter records an image observation's shape (what net.conv reshapes to); vectors have none."""
    from mtdqn.envs.gym_adapter import check_gym_id

    assert check_gym_id("CartPole-v1").obs_shape is None
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    spec = check_gym_id("MinAtar/Breakout-v1")
    assert spec.obs_shape == (10, 10, 4) and spec.obs_dim == 400
    assert spec.net_kwargs() == {"obs_dim": 400, "n_actions": 3, "obs_shape": (10, 10, 4)}


def test_a_task_without_image_shape_is_named_as_flat_or_a_stack_of_multichannel_images():
    """A frame stack of MinAtar's (10, 10, C) images (4-D) was reported as 'a flat vector'."""
    from mtdqn.nets.q import ConvEncoder

    with pytest.raises(ValueError, match=r"more than 3 dimensions: a stack of multi-channel images\): use net.conv=null"):
        ConvEncoder(None, [[16, 3, 1]])
