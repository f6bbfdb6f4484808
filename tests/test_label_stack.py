"""Result label stacks: small ones in RAM, long videos memory-mapped on disk."""
import numpy as np

from surgseg_core.io.label_stack import new_label_stack


def test_small_stack_is_in_memory(tmp_path):
    a = new_label_stack((4, 8, 8), folder=tmp_path)
    assert type(a) is np.ndarray and a.shape == (4, 8, 8) and not a.any()
    assert not list(tmp_path.iterdir())


def test_large_stack_is_a_sparse_memory_map_that_keeps_writes(tmp_path):
    shape = (2000, 540, 960)  # ~1 GB of uint8: must not be allocated in RAM
    a = new_label_stack(shape, name="clip SAM2 masks", folder=tmp_path, max_ram_mb=64)
    assert isinstance(a, np.memmap) and a.shape == shape and a.dtype == np.uint8
    a[1234, 10:20, 30:40] = 7
    a.flush()
    (path,) = tmp_path.glob("clip_SAM2_masks-*.npy")
    assert path.stat().st_blocks * 512 < 50e6  # sparse: only touched pages use disk
    back = np.load(path, mmap_mode="r")
    assert back[1234, 15, 35] == 7 and back[0].max() == 0



def test_memory_map_file_goes_with_the_array(tmp_path):
    import gc

    a = new_label_stack((3, 8, 8), folder=tmp_path, max_ram_mb=0)
    view = a[1]
    (path,) = tmp_path.glob("*.npy")
    del a
    gc.collect()
    assert path.exists(), "deleted while a view of the stack is alive"
    view[0, 0] = 1
    del view
    gc.collect()
    assert not path.exists()
