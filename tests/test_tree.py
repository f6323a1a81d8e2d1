"""Tree invariants, masks, positions and paths against brute force."""

import itertools

import pytest
import torch

from coral_bench.core.tree import DraftTree, TreeError, TreeShape, forwards_for_depth


def test_derived_values_match_brute_force():
    tree = DraftTree(tokens=(1, 5, 6, 7, 8, 9), parents=(-1, 0, 0, 1, 1, 3))
    assert tree.depths == (0, 1, 1, 2, 2, 3)
    assert tree.depth == 3
    assert tree.leaf_paths == ((0, 2), (0, 1, 4), (0, 1, 3, 5))
    assert tree.position_ids(10).tolist() == [10, 11, 11, 12, 12, 13]
    brute = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in itertools.product(range(6), repeat=2):
        brute[i, j] = j in tree.path_to(i)
    assert torch.equal(tree.ancestor_mask, brute)
    assert not tree.is_chain and DraftTree.chain(1, [2, 3]).is_chain


@pytest.mark.parametrize("tokens,parents", [
    ((1, 2), (-1, 1)),  # parent not before child
    ((1, 2, 2), (-1, 0, 0)),  # duplicate siblings
    ((1, 2), (0, 0)),  # root with a parent
    ((), ()),
])
def test_invariants_are_checked(tokens, parents):
    with pytest.raises(TreeError):
        DraftTree(tokens, parents)


def test_tree_shape_parsing():
    assert TreeShape.parse("chain:4") == TreeShape("chain", 4)
    shape = TreeShape.parse("total_tokens=16,top_k=4,depth=3")
    assert (shape.top_k, shape.depth, shape.total_tokens, shape.levels, shape.max_nodes) == (4, 3, 16, 4, 16)
    assert TreeShape.parse(shape.describe()) == shape
    assert forwards_for_depth(3) == 4
    for bad in ("chain:0", "chain:x", "top_k=4,depth=3", "top_k=4,depth=3,total_tokens=16,x=1", "wide"):
        with pytest.raises(TreeError):
            TreeShape.parse(bad)
