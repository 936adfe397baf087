"""open3d must run on a machine without the system libusb: its libusb comes from the pinned wheel."""

import subprocess
import sys
from pathlib import Path

import libusb_package

PROBE = """
import numpy as np
from modalities.pointcloud.preprocess import import_open3d
o3d = import_open3d()
mesh = o3d.geometry.TriangleMesh.create_box(1.0, 2.0, 3.0)
points = np.asarray(mesh.sample_points_uniformly(number_of_points=2000).points)
print("extent", *np.round(points.max(0) - points.min(0), 1))
with open("/proc/self/maps") as maps:
    for line in maps:
        if "libusb" in line:
            print("mapped", line.split()[-1])
"""


def test_open3d_maps_the_packaged_libusb_not_the_system_one():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    mapped = {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("mapped ")}
    packaged = Path(libusb_package.get_library_path()).resolve()
    assert mapped, f"no libusb mapped after importing open3d:\n{out}"
    assert {Path(p).resolve() for p in mapped} == {packaged}, f"libusb came from {mapped}, expected {packaged}"
    # a 1 x 2 x 3 box sampled on its surface spans (about) its full extent
    extent = next(line for line in out.splitlines() if line.startswith("extent")).split()[1:]
    assert [float(v) for v in extent] == [1.0, 2.0, 3.0]


def test_importing_the_pointcloud_package_makes_plain_open3d_importable():
    code = "import modalities.pointcloud, open3d; print(open3d.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0.20.0"
