"""The simulated FCCD as an areaDetector IOC: a ``cam1:`` driver and an ``HDF1:`` NDFileHDF5 plugin.

PV names, enum strings and read-backs are areaDetector's, so a stock Ophyd client (``AreaDetectorCam`` +
``HDF5Plugin`` with a file-store mixin) drives it as it would a real detector; the set served is the one a
stock client touches (``shared/reference/epics.md`` lists it) plus what issue 18 names. Frames are the
simulator's raw 1040 x 1152 uint16 readouts, rendered where the stage's motor records really are (their dial
positions), dark while the shutter's bi reads closed, and filed by the IOC itself with
:class:`~ns_bluesky.io.frame_writer.HDF5FrameWriter` (``/entry/data/data``, one chunk per frame, SWMR):
images never travel over Channel Access. A frame is on disk before ``Acquire_RBV`` falls back to 0, as with
areaDetector's blocking callbacks, so a client that saw the acquisition end can read the frame.

Timing is a camera's: frames come every ``AcquirePeriod`` (at least the exposure ``AcquireTime``) and none ends
sooner than its exposure after its trigger. As in the in-process ``SimFCCD``, a trigger within one period of the
last frame's end finishes one period after that end (a free-running clock), so a client's overhead between
points does not lower the rate.
Files are written only while ``Capture`` is on (Stream and Capture modes alike; Single-mode files are not
simulated); a non-zero ``CreateDirectory`` creates the whole ``FilePath`` (areaDetector's depth limit is not
simulated), and ``FilePathExists_RBV`` says whether the IOC can write there.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from ns_bluesky.io.frame_writer import HDF5FrameWriter

ENUMS = {
    "Acquire": ("Done", "Acquire"),
    "ImageMode": ("Single", "Multiple", "Continuous"),
    "TriggerMode": ("Internal", "External"),
    "ArrayCallbacks": ("Disable", "Enable"),
    "EnableCallbacks": ("Disable", "Enable"),
    "DataType": ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float32", "Float64"),
    "ColorMode": ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV411"),
    "DetectorState_RBV": ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error", "Waiting",
                          "Initializing", "Disconnected", "Aborted"),
    "BlockingCallbacks": ("No", "Yes"),
    "AutoIncrement": ("No", "Yes"),
    "AutoSave": ("No", "Yes"),
    "FilePathExists_RBV": ("No", "Yes"),
    "FileWriteMode": ("Single", "Capture", "Stream"),
    "Capture": ("Done", "Capture"),
    "WriteStatus": ("Write OK", "Write error"),
}
PATHS = {"FilePath", "FileName", "FileTemplate", "FullFileName_RBV", "WriteMessage"}  # char waveforms (> 40 chars)


def _prop(name: str, value, read_only: bool) -> pvproperty:
    if name in ENUMS or name.removesuffix("_RBV") in ENUMS:
        strings = ENUMS.get(name) or ENUMS[name.removesuffix("_RBV")]
        return pvproperty(name=name, value=strings[value], dtype=ChannelType.ENUM, enum_strings=strings,
                          read_only=read_only)
    if name in PATHS or name.removesuffix("_RBV") in PATHS:
        return pvproperty(name=name, value=value, dtype=ChannelType.CHAR, max_length=512, report_as_string=False,
                          read_only=read_only)
    if isinstance(value, str):
        return pvproperty(name=name, value=value, dtype=ChannelType.STRING, read_only=read_only)
    return pvproperty(name=name, value=value, read_only=read_only, **({"precision": 4} if isinstance(value, float) else {}))


def pv_table(name: str, table: dict[str, object], base: type) -> type:
    """A PVGroup class serving ``table`` (PV name -> initial value); each setpoint named without ``_RBV``
    gets its ``_RBV`` read-back unless the table names only the read-back."""
    ns: dict[str, pvproperty] = {}
    for pv, value in table.items():
        if pv.endswith("_RBV") or "." in pv:
            ns[pv.replace(".", "_")] = _prop(pv, value, read_only=True)
        else:
            ns[pv] = _prop(pv, value, read_only=False)
            ns[pv + "_RBV"] = _prop(pv + "_RBV", value, read_only=True)
    return type(name, (base,), ns)


class ADGroup(PVGroup):
    """areaDetector's rule for every setpoint: a write lands in its ``_RBV``; ``on_<Name>`` adds behaviour
    (raising refuses the write, returning a value replaces it)."""

    def __init__(self, prefix: str, *, initial: dict[str, object], **kwargs):
        super().__init__(prefix, **kwargs)
        for name, value in initial.items():  # before the IOC serves anything: no monitors to tell
            for attr in (name.replace(".", "_"), f"{name}_RBV"):
                if attr in self.attr_pvdb:
                    channel = self.attr_pvdb[attr]
                    strings = getattr(channel, "enum_strings", None)
                    channel._data["value"] = strings[value] if strings and isinstance(value, int) else value

    async def group_write(self, instance, value):
        name = instance.pvspec.attr
        handler = getattr(self, f"on_{name}", None)
        if handler is not None:
            result = await handler(value)
            value = value if result is None else result
        rbv = self.attr_pvdb.get(f"{name}_RBV")
        if rbv is not None:
            await rbv.write(value, verify_value=False)
        return value

    async def set(self, name: str, value) -> None:
        """Set a PV and its read-back from inside the IOC."""
        for attr in (name, f"{name}_RBV"):
            if attr in self.attr_pvdb:
                await self.attr_pvdb[attr].write(value, verify_value=False)

    def get(self, name: str):
        return self.attr_pvdb[name].value


def _enum_is(group: ADGroup, name: str, state: str) -> bool:
    value = group.get(name)
    return (ENUMS[name][value] if isinstance(value, int) else value) == state


def _check_positive(name: str, value, allow_zero: bool = True) -> None:
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value}")


def hdf_table(shape: tuple[int, int]) -> dict[str, object]:
    return {
        "EnableCallbacks": 0, "BlockingCallbacks": 1, "FilePath": "", "FileName": "", "FilePathExists_RBV": 0,
        "FileTemplate": "%s%s_%6.6d.h5", "FileNumber": 0, "FullFileName_RBV": "", "CreateDirectory": 0,
        "FileWriteMode": 2, "AutoIncrement": 0, "AutoSave": 0, "NumCapture": 0, "NumCaptured_RBV": 0,
        "Capture": 0, "ArrayCounter": 0, "ArraySize0_RBV": shape[1], "ArraySize1_RBV": shape[0],
        "ArraySize2_RBV": 0, "NDimensions_RBV": 2, "DataType_RBV": 3, "PluginType_RBV": "NDFileHDF5",
        "PortName_RBV": "HDF1", "NDArrayPort": "FCCD1", "WriteStatus": 0, "WriteMessage": "",
    }


class HDF5FilePlugin(pv_table("_HDFPVs", hdf_table((1040, 1152)), ADGroup)):
    """``HDF1:``: one file per capture, named ``FileTemplate % (FilePath, FileName, FileNumber)``."""

    def __init__(self, prefix: str, *, shape: tuple[int, int], **kwargs):
        super().__init__(prefix, initial=hdf_table(shape), **kwargs)
        self.writer = HDF5FrameWriter(".", "frames", shape)

    @property
    def capturing(self) -> bool:
        return self.writer._file is not None

    disk_full = False  #: the DiskFull fault: the disk under FilePath reads as full

    def path_problem(self) -> str:
        """Why the IOC cannot file frames under FilePath now ('' if it can)."""
        path = self.get("FilePath")
        if not path:
            return "FilePath is empty"
        if not (os.path.isdir(path) and os.access(path, os.W_OK)):
            return f"FilePath {path} is not a writable directory on the IOC's host"
        if self.disk_full:
            return f"no space left on the device of {path} (disk full)"
        return ""

    async def _refresh_path_exists(self) -> None:
        """FilePathExists_RBV, and WriteStatus/WriteMessage saying why not, as areaDetector reports it."""
        problem = self.path_problem()
        await self.set("FilePathExists_RBV", "No" if problem else "Yes")
        if problem and self.get("FilePath"):
            await self.set("WriteStatus", "Write error")
            await self.set("WriteMessage", problem[:500])
        elif not problem and _enum_is(self, "WriteStatus", "Write error"):
            await self.set("WriteStatus", "Write OK")
            await self.set("WriteMessage", "")

    async def set_disk_full(self, full: bool) -> None:
        """The DiskFull fault switched: reported at once, and frames stop being filed while it lasts."""
        self.disk_full = bool(full)
        await self._refresh_path_exists()

    async def on_FilePath(self, value):
        if value and self.get("CreateDirectory") != 0:
            try:
                os.makedirs(value, exist_ok=True)
            except OSError:
                pass  # reported through FilePathExists_RBV below
        await self.attr_pvdb["FilePath"].write(value, verify_value=False)
        await self._refresh_path_exists()

    async def on_Capture(self, value):
        if value in (0, "Done"):
            self.writer.close()
            return None
        if self.capturing:
            return None
        try:
            if problem := self.path_problem():
                raise OSError(problem)
            name = self.get("FileTemplate") % (self.get("FilePath"), self.get("FileName"), self.get("FileNumber"))
            self.writer.open(Path(name))
        except (OSError, TypeError, ValueError) as exc:
            await self.set("WriteStatus", "Write error")
            await self.set("WriteMessage", f"cannot open a file: {exc}"[:500])
            raise ValueError(f"HDF1: cannot open a file: {exc}") from None
        await self.set("FullFileName_RBV", str(self.writer.path))
        await self.set("WriteStatus", "Write OK")
        await self.set("WriteMessage", "")
        await self.set("NumCaptured", 0)
        if _enum_is(self, "AutoIncrement", "Yes"):
            await self.set("FileNumber", self.get("FileNumber") + 1)  # as AD: the number is the next file's
        return None

    def file_frame(self, frame) -> bool:
        """In the IOC's worker thread: append ``frame`` if the plugin is enabled and capturing."""
        if not (self.capturing and _enum_is(self, "EnableCallbacks", "Enable")) or self.disk_full:
            return False
        self.writer.write(frame)
        for _ in self.writer.collect_docs():  # the IOC has no RunEngine: the writer's documents are not ours
            pass
        return True

    async def frame_filed(self) -> None:
        """Back in the IOC's loop: counters, and the end of a capture of ``NumCapture`` frames."""
        await self.set("NumCaptured_RBV", self.get("NumCaptured_RBV") + 1)
        await self.set("ArrayCounter", self.get("ArrayCounter") + 1)
        limit = self.get("NumCapture")
        if limit > 0 and self.get("NumCaptured_RBV") >= limit:
            self.writer.close()
            await self.set("Capture", "Done")


def cam_table(shape: tuple[int, int], exposure_s: float, period_s: float) -> dict[str, object]:
    h, w = shape
    return {
        "Acquire": 0, "AcquireTime": exposure_s, "AcquirePeriod": period_s, "ImageMode": 0, "NumImages": 1,
        "NumExposures": 1, "TriggerMode": 0, "ArrayCallbacks": 1, "ArrayCounter": 0, "DataType": 3,
        "ColorMode": 0, "DetectorState_RBV": 0, "NumImagesCounter_RBV": 0, "ArraySizeX_RBV": w,
        "ArraySizeY_RBV": h, "ArraySizeZ_RBV": 0, "ArraySize_RBV": w * h * 2, "MaxSizeX_RBV": w, "MaxSizeY_RBV": h,
        "SizeX": w, "SizeY": h, "MinX": 0, "MinY": 0, "BinX": 1, "BinY": 1, "DataType_RBV.DISA": 0,
        "Manufacturer_RBV": "ns-bluesky simulation", "Model_RBV": f"FastCCD {h}x{w} (COSMIC-like)",
        "PortName_RBV": "FCCD1", "ArrayRate_RBV": 0.0,
    }


TRIGGER_GAPS_KEPT = 100_000  # the trigger gaps the IOC's log line sums up: its last this many

class FCCDCam(pv_table("_CamPVs", cam_table((1040, 1152), 0.1, 0.1), ADGroup)):  # values: see __init__
    """``cam1:``: ``Acquire`` takes 1 (Single), ``NumImages`` (Multiple) or endless (Continuous) frames."""

    def __init__(self, prefix: str, *, source, hdf: HDF5FilePlugin, light, prepare=None, after_frame=None,
                 exposure_s: float, period_s: float, **kwargs):
        """``source.render(index, exposure_s, light)`` draws a frame, ``light()`` says whether the shutter is
        open, ``prepare()`` (in the worker thread, before each frame) lets the simulation follow the optics,
        ``after_frame()`` (awaited in the IOC's loop) lets the fault PVs show what the frame used up."""
        shape = tuple(source.geometry.raw_shape)
        super().__init__(prefix, initial=cam_table(shape, exposure_s, period_s), **kwargs)
        self.source, self.hdf, self.light, self.prepare = source, hdf, light, prepare
        self.after_frame = after_frame  # a coroutine function run in the IOC's loop after each frame
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fccd-readout")
        self._task: asyncio.Task | None = None
        self._last_end = -math.inf
        #: seconds from each frame's end to the client's next trigger (within a second): the client's overhead per
        #: point, which must stay within AcquirePeriod - AcquireTime for frames to keep the period (the last
        #: TRIGGER_GAPS_KEPT: an IOC runs for days)
        self.trigger_gaps: deque[float] = deque(maxlen=TRIGGER_GAPS_KEPT)
        self.triggers = 0  # all of them since the IOC started
        self.late_triggers = 0  # of those, the ones that came too late to keep the period
        self.frames = 0  # rendered since the IOC started: the simulation's frame index

    @property
    def acquiring(self) -> bool:
        return self._task is not None and not self._task.done()

    def in_worker(self, func, *args) -> None:
        """Run ``func`` in the detector's worker thread, after what is queued there (frames come in order)."""
        self._pool.submit(func, *args)

    async def on_AcquireTime(self, value):
        _check_positive("AcquireTime", value, allow_zero=False)

    async def on_AcquirePeriod(self, value):
        _check_positive("AcquirePeriod", value)

    async def on_NumImages(self, value):
        if value < 1:
            raise ValueError(f"NumImages must be >= 1, got {value}")

    async def on_Acquire(self, value):
        if value in (1, "Acquire"):
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._acquire())
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    def _frames_wanted(self) -> float:
        if _enum_is(self, "ImageMode", "Single"):
            return 1
        return self.get("NumImages") if _enum_is(self, "ImageMode", "Multiple") else math.inf

    def _readout(self, exposure_s: float, light: bool) -> bool:
        """Worker thread: follow the optics, draw the frame, hand it to the file plugin."""
        if self.prepare is not None:
            self.prepare()
        frame = self.source.render(self.frames, exposure_s, light)
        self.frames += 1
        return _enum_is(self, "ArrayCallbacks", "Enable") and self.hdf.file_frame(frame)

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        await self.set("DetectorState_RBV", "Acquire")
        done, t0 = 0, time.monotonic()
        try:
            while done < self._frames_wanted():
                exposure = self.get("AcquireTime")
                period = max(self.get("AcquirePeriod"), exposure)
                now = time.monotonic()
                if 0 <= now - self._last_end < 1.0:
                    self.trigger_gaps.append(now - self._last_end)
                    self.triggers += 1
                    self.late_triggers += now - self._last_end > period - exposure
                start = self._last_end if 0 <= now - self._last_end < period else now
                end = self._last_end = max(start + period, now + exposure)
                filed = await asyncio.shield(loop.run_in_executor(self._pool, self._readout, exposure, self.light()))
                if filed:
                    await self.hdf.frame_filed()
                if self.after_frame is not None:
                    await self.after_frame()
                done += 1
                await self.set("ArrayCounter", self.get("ArrayCounter") + 1)
                await self.set("NumImagesCounter_RBV", done)
                if (remaining := end - time.monotonic()) > 0:
                    await asyncio.sleep(remaining)
                await self.attr_pvdb["ArrayRate_RBV"].write(done / max(time.monotonic() - t0, 1e-9))
        except Exception as exc:  # a frame that cannot be drawn or filed: the detector reports an error
            self.log.exception("acquisition failed")
            await self.hdf.set("WriteStatus", "Write error")
            await self.hdf.set("WriteMessage", f"frame {self.frames} failed: {exc!r}"[:500])
        finally:
            await self.set("DetectorState_RBV", "Idle")
            await self.set("Acquire", "Done")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.hdf.writer.close()
