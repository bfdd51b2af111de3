import errno

from smollm.errors import error_line
from smollm.files import WriteError


def test_os_errors_name_the_file_first():
    assert error_line(OSError(errno.EROFS, "Read-only file system", "/runs/a/train.lock")) == (
        "/runs/a/train.lock: Read-only file system")
    assert error_line(PermissionError(errno.EACCES, "Permission denied", "/x")) == "/x: Permission denied"


def test_our_own_messages_are_kept_on_one_line():
    assert error_line(FileNotFoundError("no checkpoint\n  at /x")) == "no checkpoint at /x"
    assert error_line(KeyError("model.nope: not a key")) == "model.nope: not a key"  # without repr quotes
    e = WriteError(errno.EROFS, "read-only file system", "/x")
    assert error_line(e) == "cannot write /x: read-only file system (the previous version, if any, is unchanged)"
    assert error_line(ValueError()) == "ValueError"
