"""The tools' outputs are written whole or not at all."""

import os
import pickle

import pytest
import torch

from mmunirep.utils.fileio import (
    atomic_directory,
    atomic_write,
    refuse_overwriting_input,
    save_checkpoint,
)


def test_a_failed_write_leaves_the_earlier_file_and_no_partial_one(tmp_path):
    out = tmp_path / 'out.pth'
    out.write_bytes(b'earlier result')
    with pytest.raises(OSError, match='No space left'):
        with atomic_write(str(out)) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'half of a new result')
            raise OSError(28, 'No space left on device')
    assert out.read_bytes() == b'earlier result'
    assert os.listdir(tmp_path) == ['out.pth']  # no temporary file left


def test_a_complete_write_replaces_the_file_with_the_usual_mode(tmp_path):
    out = tmp_path / 'sub' / 'result.pkl'
    with atomic_write(str(out)) as tmp:
        assert tmp.endswith('.pkl') and os.path.dirname(tmp) == str(out.parent)
        with open(tmp, 'w') as f:
            f.write('new')
    assert out.read_text() == 'new' and os.listdir(out.parent) == ['result.pkl']
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_directory_is_filled_only_when_complete(tmp_path):
    out = tmp_path / 'maps'
    with pytest.raises(RuntimeError, match='^the test failed half way$'):  # passed on as it is
        with atomic_directory(str(out)) as tmp:
            (open(os.path.join(tmp, 'a.png'), 'w')).close()
            raise RuntimeError('the test failed half way')
    assert not out.exists() and os.listdir(tmp_path) == []
    with atomic_directory(str(out)) as tmp:
        os.makedirs(os.path.join(tmp, 'x'))
        for name in ('a.png', 'x/b.png'):
            with open(os.path.join(tmp, name), 'w') as f:
                f.write(name)
    assert sorted(os.listdir(out)) == ['a.png', 'x'] and os.listdir(tmp_path) == ['maps']


def test_save_checkpoint_is_read_back_before_it_replaces_the_file(tmp_path, monkeypatch):
    out = tmp_path / 'ckpt.pth'
    state = {'w': torch.randn(3, 4), 'b': torch.randn(3)}
    save_checkpoint({'meta': {'a': 1}, 'state_dict': state}, str(out))
    loaded = torch.load(out, weights_only=True)
    assert loaded['meta'] == {'a': 1} and all(
        torch.equal(loaded['state_dict'][k], v) for k, v in state.items()
    )
    # a writer that loses a tensor on the way: the file read back differs, nothing replaced

    save = torch.save

    def lossy_save(obj, path):
        save({'state_dict': {'w': obj['state_dict']['w']}}, path)

    monkeypatch.setattr('mmunirep.utils.fileio.torch.save', lossy_save)
    with pytest.raises(OSError, match='read back differs'):
        save_checkpoint({'state_dict': {'w': torch.zeros(2), 'b': torch.zeros(1)}}, str(out))
    assert torch.equal(torch.load(out, weights_only=True)['state_dict']['w'], state['w'])


def test_an_output_equal_to_the_input_is_refused_unless_asked(tmp_path):
    src = tmp_path / 'a.pth'
    src.write_bytes(b'x')
    os.symlink(src, tmp_path / 'link.pth')
    for same in (str(src), str(tmp_path / 'link.pth'), str(tmp_path / '.' / 'a.pth')):
        with pytest.raises(ValueError, match='is the input .* --overwrite-input'):
            refuse_overwriting_input(same, [str(src)])
    refuse_overwriting_input(str(src), [str(src)], allowed=True)
    refuse_overwriting_input(str(tmp_path / 'b.pth'), [str(src)])


class MetaObject:
    """An object in a checkpoint's meta that only unsafe loading rebuilds."""


def test_a_checkpoint_that_needed_the_unsafe_opt_in_is_read_back_under_it(tmp_path, monkeypatch):
    """With MMUNIREP_UNSAFE_LOAD=1 (the source file needed it), the converters' output keeps its
    meta and is read back as the tools read it; without it, the read-back refuses it."""
    from mmunirep.utils.checkpoint import UNSAFE_ENV

    out = tmp_path / 'converted.pth'
    checkpoint = {'meta': {'extra': MetaObject()}, 'state_dict': {'w': torch.randn(2)}}
    monkeypatch.setenv(UNSAFE_ENV, '1')
    save_checkpoint(checkpoint, str(out))
    assert isinstance(torch.load(out, weights_only=False)['meta']['extra'], MetaObject)
    monkeypatch.delenv(UNSAFE_ENV)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        save_checkpoint(checkpoint, str(tmp_path / 'refused.pth'))
    assert not (tmp_path / 'refused.pth').exists()
