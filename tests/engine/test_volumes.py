import os

import pytest

from engine import AlreadyExists, Conflict, InvalidInput, Node, NotFound, format_size, parse_size


@pytest.mark.parametrize("text,value", [("64MiB", 64 << 20), ("1GiB", 1 << 30), ("4096", 4096), ("512KiB", 512 << 10),
                                        ("2TiB", 2 << 40), ("1g", 1 << 30), (" 8 MiB ", 8 << 20), (7, 7)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text,fragment", [("1GB", "unit"), ("0", "greater than zero"), ("-1MiB", "invalid size"),
                                           ("MiB", "invalid size"), ("1.5GiB", "invalid size"), ("", "invalid size")])
def test_parse_size_refuses(text, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        parse_size(text)


def test_format_size_round_trips():
    for n in (1 << 30, 3 << 20, 1536 << 10, 777):
        assert parse_size(format_size(n)) == n


def test_create_list_info_delete(root):
    with Node(root) as node:
        info = node.create_volume("db01", "64MiB")
        assert info["size"] == 64 << 20 and info["block_size"] == 65536 and info["allocated"] == 0
        node.create_volume("erp", "1GiB", "4KiB")
        assert [v["name"] for v in node.list_volumes()] == ["db01", "erp"]
        node.delete_volume("erp")
        assert [v["name"] for v in node.list_volumes()] == ["db01"]
        assert not os.path.exists(os.path.join(root, "volumes", "erp.img"))
    with Node(root) as node:  # survives reopen
        assert node.volume_info("db01")["size"] == 64 << 20


def test_never_written_reads_zero_and_sparse(root):
    with Node(root) as node:
        node.create_volume("v", "1GiB")
        assert node.read("v", (1 << 30) - 4096, 4096) == bytes(4096)
        node.write("v", 500 << 20, b"x" * 10)
        assert node.volume_info("v")["allocated"] <= 1 << 20


def test_unaligned_write_spanning_blocks(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB", "4KiB")
        data = os.urandom(10000)
        node.write("v", 4095, data)  # starts one byte before a block edge, ends mid-block
        assert node.read("v", 4095, 10000) == data
        assert node.read("v", 4000, 95) == bytes(95)
        assert node.read("v", 4095 + 10000, 100) == bytes(100)


@pytest.mark.parametrize("offset,length", [(-1, 1), (1 << 20, 1), ((1 << 20) - 1, 2), (0, (1 << 20) + 1)])
def test_out_of_range_io_changes_nothing(root, offset, length):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.write("v", 0, b"keep")
        with pytest.raises(InvalidInput, match="beyond its size|negative"):
            node.write("v", offset, b"z" * length)
        with pytest.raises(InvalidInput):
            node.read("v", offset, length)
        assert node.read("v", 0, 4) == b"keep"
        assert node.volume_info("v")["io"]["writes"] == 1


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a@b", "..", "x" * 65, "a b", "é"])
def test_bad_names(root, name):
    with Node(root) as node:
        with pytest.raises(InvalidInput, match="invalid volume name"):
            node.create_volume(name, "1MiB")
        assert node.list_volumes() == []


@pytest.mark.parametrize("size,block,fragment", [("1000", "64KiB", "multiple of 512"), ("1GB", "64KiB", "unit"),
                                                 ("2PiB", "64KiB", "invalid size"), ("1MiB", "3KiB", "block size"),
                                                 ("1MiB", "1KiB", "block size"), ("1MiB", "32MiB", "block size")])
def test_bad_sizes(root, size, block, fragment):
    with Node(root) as node:
        with pytest.raises(InvalidInput, match=fragment):
            node.create_volume("v", size, block)
        assert node.list_volumes() == []
    assert os.listdir(os.path.join(root, "volumes")) == []


def test_duplicate_and_missing(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.write("v", 0, b"data")
        with pytest.raises(AlreadyExists):
            node.create_volume("v", "2MiB")
        assert node.volume_info("v")["size"] == 1 << 20 and node.read("v", 0, 4) == b"data"
        with pytest.raises(NotFound, match="volume 'nope' does not exist"):
            node.read("nope", 0, 1)
        with pytest.raises(NotFound):
            node.delete_volume("nope")


def test_volume_in_use_cannot_be_deleted(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.create_snapshot("v-ci", "v", "complete-image")
        with pytest.raises(Conflict, match="source of snapshot"):
            node.delete_volume("v")
        with pytest.raises(Conflict, match="delete the snapshot instead"):
            node.delete_volume("v-ci")
        with pytest.raises(Conflict, match="only its increments write"):
            node.write("v-ci", 0, b"x")


def test_root_is_exclusive(root):
    with Node(root):
        with pytest.raises(Conflict, match="open in another"):
            Node(root)


def test_orphan_files_are_swept(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
    with open(os.path.join(root, "volumes", "ghost.img"), "wb") as f:  # a create interrupted before its row
        f.truncate(4096)
    with Node(root) as node:
        assert [v["name"] for v in node.list_volumes()] == ["v"]
    assert sorted(os.listdir(os.path.join(root, "volumes"))) == ["v.img"]


def test_missing_root_is_not_created_for_reads(tmp_path):
    with pytest.raises(NotFound, match="not an aimsnap node root"):
        Node(str(tmp_path / "nothing"), create=False)
    assert not (tmp_path / "nothing" / "node.db").exists()
