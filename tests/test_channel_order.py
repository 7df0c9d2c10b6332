"""The encoder's channel-order search (utils/coding/channel_order.py) and the file versions that record it.

A model that records its λ codes each picture in the best of its six channel orders; the six orders of one
picture then code to the same bits (but for the recorded order) and decode to the same picture with its
channels where they were. A model without a λ, and --keep-channel-order, code as before, into the same
version-3 bytes. The order is covered by the stored coder check, so a crafted order byte is refused. All on
the tiny preset and a 64×64 crop.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from conftest import photo
from utils.coding import channel_order
from utils.coding.bitstream import Bitstream, pack, unpack
from utils.coding.codec import decode_bitstream, encode_image
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

LMBDA = 0.01


@pytest.fixture
def searching(tiny_model, monkeypatch):
    """The tiny model with a λ on record: its encoder searches."""
    monkeypatch.setattr(tiny_model, "lmbda", LMBDA)
    return tiny_model


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return photo("coffee")[100:164, 200:264]


def test_reorder_and_restore_are_inverse_for_every_order(crop):
    for index in range(6):
        moved = channel_order.reorder(crop, index)
        assert np.array_equal(channel_order.restore(moved, index), crop)
        assert channel_order.name(index) == "".join("RGB"[c] for c in channel_order.CHANNEL_ORDERS[index])
    assert np.array_equal(channel_order.reorder(crop, 0), crop)


def test_the_proxy_shrinks_by_an_integer_factor_alike_on_every_channel(crop):
    big = np.tile(crop, (5, 5, 1))  # 320×320 = 102,400 pixels: halved to 160×160
    small = channel_order.proxy(big)
    assert small.shape == (160, 160, 3) and small.size // 3 <= channel_order.SEARCH_PIXELS
    assert np.array_equal(channel_order.proxy(big[..., ::-1]), small[..., ::-1])
    assert channel_order.proxy(crop) is crop  # small enough already


def test_six_channel_orders_of_a_picture_code_to_one_result(searching, crop):
    """Whatever order the picture comes in, the encoder codes the same candidate: the same strings (the
    file one byte longer where it records an order), and a decoding that is the same picture with the
    input's channels where they were."""
    reference = None
    for index in range(6):
        given = channel_order.reorder(crop, index)
        bs, stats = encode_image(searching, given)
        assert stats["channel_order"] == bs.channel_order
        assert bs.version == (3 if bs.channel_order == 0 else 5)
        decoded, _ = decode_bitstream(searching, unpack(pack(bs)))
        coded = channel_order.reorder(given, bs.channel_order)  # the candidate it chose
        if reference is None:
            reference = (coded, bs.y_string, bs.z_string, channel_order.reorder(decoded, bs.channel_order))
        assert np.array_equal(coded, reference[0])
        assert (bs.y_string, bs.z_string) == reference[1:3]
        assert len(pack(bs)) == 58 + len(bs.y_string) + len(bs.z_string) + (bs.channel_order > 0)
        assert np.array_equal(channel_order.reorder(decoded, bs.channel_order), reference[3])


def test_the_choice_is_the_best_scoring_order(searching, crop):
    values = channel_order.scores(searching, crop, LMBDA)
    assert len(values) == 6 and len(set(values)) > 1
    assert channel_order.choose(searching, crop) == int(np.argmin(values))


def test_without_a_lambda_or_with_order_0_the_file_is_the_plain_version_3_file(tiny_model, searching, crop):
    plain, stats = encode_image(searching, crop, channel_order=0)
    assert plain.version == 3 and plain.channel_order == 0 and stats["channel_order"] == 0
    searching.lmbda = None  # the fixture's monkeypatch restores it
    assert channel_order.choose(tiny_model, crop) == 0
    assert pack(encode_image(tiny_model, crop)[0]) == pack(plain)


def _with_order(data: bytes, order: int) -> bytes:
    """A version-5 file with its order byte (offset 54) replaced and its CRC recomputed, as an attacker would."""
    body = bytearray(data[:-4])
    body[54] = order
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


@pytest.fixture
def reordered_file(searching, crop) -> bytes:
    """A version-5 file: the crop given in an order the search does not keep."""
    for index in range(6):
        bs, _ = encode_image(searching, channel_order.reorder(crop, index))
        if bs.channel_order:
            return pack(bs)
    pytest.fail("every order of the crop was coded as given")


def test_a_crafted_order_byte_is_refused_by_the_coder_check(searching, reordered_file):
    true_order = unpack(reordered_file).channel_order
    for order in range(1, 6):
        if order == true_order:
            continue
        bs = unpack(_with_order(reordered_file, order))  # a well-formed header ...
        with pytest.raises(UserError, match="coder check"):  # ... whose order the check does not match
            decode_bitstream(searching, bs)
    decode_bitstream(searching, unpack(reordered_file))


@pytest.mark.parametrize("order", [0, 6, 255])
def test_an_order_byte_outside_1_to_5_is_one_header_error(reordered_file, order):
    with pytest.raises(UserError, match="corrupted header: channel order"):
        unpack(_with_order(reordered_file, order))


def test_versions_5_and_6_round_trip_the_order_and_3_and_4_cannot_carry_one():
    bs = Bitstream(height=64, width=64, pad=(0, 0, 0, 0), z_shape=(1, 1), y_string=b"y" * 9, z_string=b"z",
                   fingerprint=bytes(16), check=7)
    for version, quality in ((5, None), (6, 2.5)):
        again = unpack(pack(dataclasses.replace(bs, version=version, quality=quality, channel_order=4)))
        assert (again.version, again.quality, again.channel_order) == (version, quality, 4)
    with pytest.raises(ValueError, match="channel order"):
        pack(dataclasses.replace(bs, channel_order=4))
    with pytest.raises(ValueError, match="channel order"):
        pack(dataclasses.replace(bs, version=5, channel_order=0))
