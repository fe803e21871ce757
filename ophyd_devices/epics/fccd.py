"""The FCCD over Channel Access: a stock areaDetector client whose HDF5 plugin announces frames as stream documents.

Built from Ophyd's own parts (``SingleTrigger``, ``DetectorBase``, ``AreaDetectorCam``, ``HDF5Plugin`` and the
``FileStoreHDF5`` stage logic that sets FilePath/FileName/FileTemplate and starts Capture), so any areaDetector
IOC with an HDF5 plugin serves it. One change: the file-store mixin composes ``stream_resource`` (the IOC's
file, dataset ``/entry/data/data``) and one ``stream_datum`` per frame, where Ophyd's composes the older
``resource``/``datum``. Those are the documents the simulated FCCD's frame writer emits, so the bridge, the
catalog (bluesky's TiledWriter) and the exporters read frames from either detector the same single way.

The device has the simulated FCCD's interface for the plans: ``geometry`` (distance from the detector-distance
PV), ``acquire_time``/``acquire_period`` (the cam's), ``validate_settings`` and ``image_key``.
"""

from __future__ import annotations

import functools
import logging
import time

from event_model import compose_stream_resource
from ophyd import Component as Cpt
from ophyd import EpicsSignalRO, Staged
from ophyd import FormattedComponent as FCpt
from ophyd.areadetector.cam import AreaDetectorCam
from ophyd.areadetector.detectors import DetectorBase
from ophyd.areadetector.filestore_mixins import FileStoreHDF5
from ophyd.areadetector.plugins import HDF5Plugin
from ophyd.areadetector.trigger_mixins import ADTriggerStatus, SingleTrigger

from ns_bluesky.errors import DeviceError, ParameterError
from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.instrument.detector import DetectorGeometry

from ...io.frame_writer import DATASET
from ..detector_settings import check_exposure_and_period
from .waits import WRITE_TIMEOUT_S, DisconnectGuard, check_connected, finish_abandoned

log = logging.getLogger(__name__)

__all__ = ["EpicsFCCD", "StreamHDF5FileStore", "make_fccd"]


class StreamHDF5FileStore(FileStoreHDF5):
    """Ophyd's HDF5 file-store staging, announcing the IOC's file with ``stream_resource``/``stream_datum``.

    The frame data key is the parent detector's ``image_key``; frames are counted per file, one per trigger.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames_announced = 0

    def _generate_resource(self, resource_kwargs: dict) -> None:
        if resource_kwargs["frame_per_point"] != 1:
            raise ParameterError(f"{self.parent.name}: one frame per point, got {resource_kwargs['frame_per_point']}"
                                 " (cam NumImages / HDF NumCapture)")
        cam = self.parent.cam
        shape = (cam.array_size.array_size_y.get(), cam.array_size.array_size_x.get())
        bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=f"file://localhost{self._fn}",
            data_key=self.parent.image_key,
            parameters={"dataset": DATASET, "chunk_shape": (1, *shape)},
        )
        self._compose_datum, self.frames_announced = bundle.compose_stream_datum, 0
        self._asset_docs_cache.append(("stream_resource", bundle.stream_resource_doc))

    def generate_datum(self, key: str, timestamp: float, datum_kwargs: dict) -> None:
        i = self.frames_announced
        datum = self._compose_datum(indices={"start": i, "stop": i + 1}, validate=i == 0)
        self._asset_docs_cache.append(("stream_datum", datum))
        self.frames_announced = i + 1

    def check_file_path(self, timeout_s: float = WRITE_TIMEOUT_S) -> None:
        """Before staging changes anything: ``DeviceError`` in one line if the IOC cannot file under the write
        path (FilePathExists_RBV No), with the plugin's own WriteMessage (an unwritable path, a full disk)."""
        path = self.write_path_template
        self.file_path.set(path).wait(timeout_s)
        if self.file_path_exists.get(use_monitor=False):
            return
        message = self.write_message.get(as_string=True, use_monitor=False)
        raise DeviceError(f"{self.parent.name if self.parent else self.name}: the IOC cannot write frames under "
                          f"{path} (FilePathExists_RBV No): {message or 'no message from the IOC'}; no run was opened")

    def new_file(self) -> None:
        """After a suspension: the frames to come go to a new file, announced by its own ``stream_resource``
        (the catalog joins them under the same key), and the frames announced but recorded by no event
        (the point the RunEngine rewound past) are forgotten; what the last file holds stays there."""
        self.unstage()  # closes the file (Capture 0) and forgets what no event took
        self.stage()


class FCCDHDF5Plugin(HDF5Plugin, StreamHDF5FileStore):
    lazy_wait_for_connection = False
    #: monitored: read() checks it every frame, and a CA get per frame costs up to tens of ms (epics.md, section 1)
    num_captured = Cpt(EpicsSignalRO, "NumCaptured_RBV", auto_monitor=True)


class FCCDCam(AreaDetectorCam):
    lazy_wait_for_connection = False  # an absent IOC must not block construction (shared/reference/epics.md)


class EpicsFCCD(SingleTrigger, DetectorBase):
    """The FCCD's areaDetector IOC; frames are filed by the IOC under ``write_dir`` and read from there."""

    lazy_wait_for_connection = False
    cam = FCpt(FCCDCam, "{prefix}{_cam_suffix}")
    hdf5 = FCpt(FCCDHDF5Plugin, "{prefix}{_hdf_suffix}", write_path_template="/")
    distance = FCpt(EpicsSignalRO, "{_distance_pv}", kind="config", auto_monitor=True)

    #: longest a single frame may take before the trigger fails instead of hanging the scan
    trigger_timeout_s = 30.0

    def __init__(self, prefix: str, *, cam: str, hdf: str, distance_pv: str, geometry: DetectorGeometry,
                 write_dir: str, name: str, **kwargs):
        self._cam_suffix, self._hdf_suffix, self._distance_pv = cam, hdf, distance_pv
        self._status_type = functools.partial(ADTriggerStatus, timeout=self.trigger_timeout_s)
        super().__init__(prefix, name=name, **kwargs)
        self.guard = DisconnectGuard(self.name, self.cam.acquire)
        self._settings_at_stage: dict = {}
        self._geometry = geometry
        self.hdf5.write_path_template = self.hdf5.read_path_template = write_dir.rstrip("/") + "/"
        self.hdf5.stage_sigs["file_write_mode"] = "Stream"
        self.cam.stage_sigs["num_images"] = 1

    @property
    def image_key(self) -> str:
        return self._image_name

    @property
    def geometry(self) -> DetectorGeometry:
        """The description's readout layout at the distance the detector-distance PV holds now."""
        return DetectorGeometry.model_validate({**self._geometry.model_dump(), "distance_m": self.distance.get()})

    @property
    def acquire_time(self):
        return self.cam.acquire_time

    @property
    def acquire_period(self):
        return self.cam.acquire_period

    def validate_settings(self) -> None:
        """Exposure and period must make sense before any run opens (the simulated FCCD's rule)."""
        check_exposure_and_period(self.name, self.acquire_time.get(), self.acquire_period.get())

    def stage(self):
        """Refused before anything changes (so before a run opens) if the settings make no sense or the IOC
        cannot write under the write path (``StreamHDF5FileStore.check_file_path``)."""
        check_connected(self.name, self.cam.acquire)
        self.validate_settings()
        self.hdf5.check_file_path()
        staged = super().stage()
        # what a restarted IOC would lose and resume() puts back (a real one has autosave)
        self._settings_at_stage = {sig: sig.get() for sig in (self.cam.acquire_time, self.cam.acquire_period)}
        return staged

    def unstage(self):
        """As Ophyd's, but an IOC that is gone does not turn the end of a failed run into a second error."""
        if self.cam.acquire.connected:
            return super().unstage()
        log.warning("%s: the IOC is gone; unstaged without restoring its settings", self.name)
        for dev in (self.hdf5, self.cam, self):
            dev._staged = Staged.no
        self.hdf5._asset_docs_cache.clear()
        return [self]

    def pause(self) -> None:
        """A suspension: the frame in flight is abandoned (the RunEngine takes the point again on resume)."""
        status, self._status = self._status, None
        self.guard.abandon()
        finish_abandoned([status], self.name)

    def resume(self) -> None:
        """After a suspension: the IOC back (within a timeout), the exposure it may have lost on a restart
        put back, and a new file for the frames to come (``StreamHDF5FileStore.new_file``)."""
        if self._staged != Staged.yes:
            return
        for sig in (self.cam.acquire, self.cam.acquire_time, self.hdf5.capture, self.hdf5.file_path):
            try:
                sig.wait_for_connection(timeout=WRITE_TIMEOUT_S)
            except TimeoutError:
                raise DeviceError(f"{self.name}: the IOC did not come back within {WRITE_TIMEOUT_S:g} s after the "
                                  f"suspension ({sig.pvname} disconnected)") from None
        for sig, value in self._settings_at_stage.items():
            if sig.get(use_monitor=False) != value:
                log.warning("%s: the IOC lost %s; putting back %g", self.name, sig.name, value)
                sig.set(value).wait(WRITE_TIMEOUT_S)
        self.hdf5.new_file()

    def trigger(self) -> ADTriggerStatus:
        """``SingleTrigger.trigger`` without its race: a frame that ends before ``trigger`` returns clears
        ``self._status`` in the monitor thread, and the stock method then returns None to the RunEngine."""
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name} is not staged; stage it before triggering")
        check_connected(self.name, self.cam.acquire)
        status = self._status = self.guard.watch(self._status_type(self))
        self.generate_datum(self._image_name, time.time(), {})
        self._acquisition_signal.put(1, wait=False)
        return status

    def describe(self) -> dict:
        d = super().describe()
        d[self.image_key] = {
            "source": f"PV:{self.hdf5.prefix}",
            "dtype": "array",
            "shape": list(self._geometry.raw_shape),
            "dtype_numpy": self.dtype_numpy or "<u2",
            "external": "STREAM:",
        }
        return d

    def read(self) -> dict:
        """The frame must be in the file before its event goes out: the bridge and the catalog read it there."""
        filed = self.hdf5.num_captured.get()  # posted before Acquire_RBV fell, so normally here already
        if filed < self.hdf5.frames_announced:
            filed = self.hdf5.num_captured.get(use_monitor=False)
        if filed < self.hdf5.frames_announced:
            message = self.hdf5.write_message.get(as_string=True, use_monitor=False)
            raise DeviceError(f"{self.name}: the IOC filed {filed} of {self.hdf5.frames_announced} frames in "
                              f"{self.hdf5.full_file_name.get()}: {message or 'no message from the IOC'}")
        return super().read()


def make_fccd(d: BeamlineDescription, write_dir: str, name: str = "fccd") -> EpicsFCCD:
    return EpicsFCCD(d.pv(d.detector.prefix), cam=d.detector.cam, hdf=d.detector.hdf,
                     distance_pv=d.pv(d.optics.detector_distance), geometry=d.detector.geometry,
                     write_dir=str(write_dir), name=name)
