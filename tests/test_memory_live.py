"""The live-storage tracker the memory plan is checked against: it must count each storage once, give it
back when it is freed, and record peaks per phase, on the meta device as on the CPU."""

import torch
import torch.nn.functional as F

from imvedit.memory.live import LiveStorage, flash_attention, resident_bytes

KIB = 1024


def test_counts_a_storage_once_and_releases_it_when_freed():
    tracker = LiveStorage("meta")
    with tracker:
        a = torch.empty(256, device="meta")  # 1 KiB
        view = a[16:].view(-1, 8)  # shares a's storage: nothing new
        b = a * 2  # a new 1 KiB
        assert tracker.current == 2 * KIB
        del a
        assert tracker.current == 2 * KIB  # the view keeps the storage alive
        del view, b
        assert tracker.current == 0
    assert tracker.peak == 2 * KIB


def test_peak_and_current_after_a_temporary():
    tracker = LiveStorage("meta")
    with tracker:
        x = torch.empty(1024, device="meta")
        y = (x + 1) * 3  # x + 1 is a temporary, freed once the product exists
        assert tracker.current == 8 * KIB
        assert tracker.peak == 12 * KIB
        del x, y
    assert tracker.current == 0


def test_tracks_only_the_chosen_device_and_works_on_cpu():
    tracker = LiveStorage("cpu")
    with tracker:
        torch.empty(256, device="meta")
        c = torch.ones(256)
        assert tracker.current == KIB
        del c
        assert tracker.current == 0


def test_phases_record_their_start_peak_and_largest_rise():
    tracker = LiveStorage("meta")
    with tracker:
        kept = torch.empty(256, device="meta")
        for size in (256, 1024):
            with tracker.phase("step"):
                tmp = torch.empty(size, device="meta")
                del tmp
        phase = tracker.phases["step"]
        assert (phase.start, phase.end) == (KIB, KIB)
        assert phase.peak == 5 * KIB and phase.rise == 4 * KIB
        del kept


def test_adopted_weights_are_counted_once_when_swapped():
    """Layerwise casting replaces a layer's weights while it runs; adopted, the old storage leaves as the
    new one arrives."""
    with torch.device("meta"):
        layer = torch.nn.Linear(64, 64, bias=False)
    tracker = LiveStorage("meta")
    tracker.adopt(layer)
    assert tracker.current == resident_bytes(layer) == 64 * 64 * 4
    with tracker:
        layer.to(torch.bfloat16)
        assert tracker.current == 64 * 64 * 2


def test_resident_bytes_counts_tied_weights_once():
    with torch.device("meta"):
        a, b = torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)
    b.weight = a.weight
    assert resident_bytes(a, b) == 8 * 8 * 4


def test_flash_attention_allocates_the_output_not_the_scores():
    q = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.bfloat16)
    original = F.scaled_dot_product_attention
    tracker = LiveStorage("meta")
    with tracker, flash_attention():
        out = F.scaled_dot_product_attention(q, q, q)
    output, lse = 4096 * 2 * 64 * 2, 2 * 4096 * 4
    assert out.shape == q.shape
    assert tracker.peak == output + lse  # no 4096 x 4096 matrix
    assert tracker.current == output
    assert F.scaled_dot_product_attention is original  # restored on leaving
    assert out.transpose(1, 2).is_contiguous()  # laid out as flash attention returns it


def test_host_placeholders_stand_in_for_copies_of_meta_tensors():
    tracker = LiveStorage("meta", host_placeholders=True)
    with tracker:
        x = torch.empty(1024, device="meta")
        host = x.to("cpu")
        assert host.device.type == "cpu" and host.shape == x.shape
        back = host.to("meta")  # bringing it back in allocates it on the device
        assert tracker.current == 8 * KIB
        del back


def test_scalar_reads_answer_the_given_value():
    tracker = LiveStorage("meta")
    with tracker, tracker.scalar_reads(False):
        assert not bool(torch.ones(4, device="meta").all())
