import gc


def test_gc() -> None:
    gc.collect()
