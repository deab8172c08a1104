"""Sandboxed CadQuery worker for cadrag's evaluator.

Long-lived: imports cadquery once, then answers JSON-line requests on stdin with JSON-line
responses on stdout. Every snippet runs in a forked child that is sandboxed before the
untrusted code is even parsed:

* AST allow-list: the GenCAD dialect (assignments, calls on CadQuery objects, tuples/lists,
  keywords) plus plain arithmetic; only `import cadquery [as cq]` and `import math`; no
  dunder or private names; attribute names from a fixed list of CadQuery/math API names.
* trimmed builtins (abs, min, max, round, ...; no open, getattr, __import__ of anything else).
* rlimits: address space (memory), CPU seconds, file size 0, no core dumps.
* seccomp-BPF filter (installed through prctl from ctypes, no extra package): no sockets,
  no execve, no fork/vfork/clone of processes (threads allowed), no kill of other processes,
  no open for writing, no unlink/rename/mkdir/chmod/..., no ptrace, mount, namespaces.
  seccomp rather than unshare: it needs no privileges or user namespaces (often disabled
  in containers and CI), costs microseconds per child and also blocks file writes and exec,
  which a network namespace alone would not.
* wall-clock timeout enforced here, in the parent, with SIGKILL.

The child reports through a pipe in length-prefixed frames, one per phase (gt, pred,
volume IoU), so a hang or crash is attributed to the phase that caused it.

Before it says ready the worker makes CadQuery's `Plane.named` build only the plane asked
for (checked equal to the original) and backs its memory with huge pages, so that each
fork is cheaper; see `build_only_the_named_plane` and `back_memory_with_huge_pages`.
"""

import ast
import base64
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import textwrap
import time
import traceback

PROTOCOL_VERSION = 1
MAX_CODE_BYTES = 1 << 20
# CadQuery's STL export defaults, which the reference metric meshes with.
MESH_LINEAR_TOLERANCE = 0.1
MESH_ANGULAR_TOLERANCE = 0.1
PREFERRED_NAMES = ["solid", "result", "shape", "part", "object", "obj", "res"]

# ---------------------------------------------------------------------------------------
# AST allow-list


ALLOWED_NODES = {
    "Module", "Expr", "Assign", "AugAssign", "Pass", "Import", "ImportFrom", "alias",
    "Name", "Load", "Store", "Constant", "Tuple", "List", "Call", "keyword", "Attribute",
    "BinOp", "UnaryOp", "Add", "Sub", "Mult", "Div", "FloorDiv", "Mod", "Pow", "USub",
    "UAdd",
}

ALLOWED_MODULES = {"cadquery", "math"}

ALLOWED_BUILTINS = [
    "abs", "min", "max", "round", "float", "int", "pow", "sum", "len", "range", "list",
    "tuple", "bool", "print",
]

# Public CadQuery and math API names a snippet may reach through attributes. A fixed list
# (rather than "no underscore") because module attributes such as cq.occ_impl.shapes.os
# would otherwise lead straight to os.system.
ALLOWED_ATTRIBUTES = set(
    """
    Workplane Plane Vector Location Solid Compound Face Wire Edge Shape Sketch Matrix
    named XY YZ ZX XZ YX ZY front back left right top bottom
    moveTo move lineTo line hLine vLine hLineTo vLineTo polarLine polarLineTo threePointArc
    sagittaArc radiusArc tangentArcPoint spline splineApprox parametricCurve close circle
    ellipse ellipseArc rect polygon polyline slot2D add extrude revolve sweep loft union cut
    intersect box cylinder sphere wedge hole cboreHole cskHole workplane faces edges vertices
    wires solids shells fillet chamfer shell translate rotate rotateAboutCenter mirror
    mirrorX mirrorY center pushPoints rarray polarArray val vals first last end tag combine
    clean transformed offset2D split copyWorkplane twistExtrude toPending consolidateWires
    section findSolid workplaneFromTagged size item objects
    x y z origin xDir yDir zDir normalized cross dot Length multiply
    Volume Center Area fuse
    pi e tau sqrt sin cos tan asin acos atan atan2 radians degrees hypot floor ceil fabs
    exp log log10 copysign
    """.split()
)


class Rejected(Exception):
    """The snippet uses something outside the allow-list."""


def check_ast(tree):
    """Raise Rejected unless every node of `tree` is in the dialect's allow-list."""
    for node in ast.walk(tree):
        kind = type(node).__name__
        if kind not in ALLOWED_NODES:
            line = getattr(node, "lineno", "?")
            raise Rejected(f"line {line}: {kind} is not allowed in the CadQuery dialect")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise Rejected(f"line {node.lineno}: private or dunder name {node.id!r}")
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise Rejected(f"line {node.lineno}: private or dunder attribute {node.attr!r}")
            if node.attr not in ALLOWED_ATTRIBUTES:
                raise Rejected(f"line {node.lineno}: attribute {node.attr!r} is not allowed")
            if not isinstance(node.ctx, ast.Load):
                raise Rejected(f"line {node.lineno}: assigning to attributes is not allowed")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_MODULES:
                    raise Rejected(f"line {node.lineno}: import of {alias.name!r} is not allowed")
        if isinstance(node, ast.ImportFrom):
            if node.module not in ALLOWED_MODULES or node.level:
                raise Rejected(f"line {node.lineno}: import from {node.module!r} is not allowed")
            for alias in node.names:
                if alias.name == "*" or alias.name not in ALLOWED_ATTRIBUTES:
                    raise Rejected(f"line {node.lineno}: import of {alias.name!r} is not allowed")
        if isinstance(node, ast.alias) and node.asname and node.asname.startswith("_"):
            raise Rejected(f"private alias {node.asname!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            raise Rejected(f"line {node.lineno}: bytes literals are not allowed")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            # 9**9**9 style exponent bombs: allow small literal exponents only
            right = node.right
            if not (isinstance(right, ast.Constant) and isinstance(right.value, (int, float))
                    and abs(right.value) <= 64):
                raise Rejected(f"line {node.lineno}: only small literal exponents are allowed")


# ---------------------------------------------------------------------------------------
# seccomp


AUDIT_ARCH_X86_64 = 0xC000003E
# x86_64 syscall numbers
NR = dict(
    open=2, openat=257, openat2=437, creat=85, clone=56, clone3=435, fork=57, vfork=58,
    execve=59, execveat=322, kill=62, tkill=200, tgkill=234,
    socket=41, connect=42, accept=43, sendto=44, recvfrom=45, sendmsg=46, recvmsg=47,
    shutdown=48, bind=49, listen=50, socketpair=53, accept4=288, recvmmsg=299, sendmmsg=307,
    ptrace=101, process_vm_readv=310, process_vm_writev=311,
    unlink=87, unlinkat=263, rename=82, renameat=264, renameat2=316, mkdir=83, mkdirat=258,
    rmdir=84, link=86, linkat=265, symlink=88, symlinkat=266, chmod=90, fchmod=91,
    fchmodat=268, chown=92, fchown=93, lchown=94, fchownat=260, truncate=76, ftruncate=77,
    mknod=133, mknodat=259, mount=165, umount2=166, pivot_root=155, chroot=161, setns=308,
    unshare=272, reboot=169, init_module=175, finit_module=313, delete_module=176,
    kexec_load=246, bpf=321, perf_event_open=298, userfaultfd=323, keyctl=250,
    add_key=248, request_key=249, io_uring_setup=425, io_uring_enter=426,
    io_uring_register=427, setxattr=188, lsetxattr=189, fsetxattr=190, removexattr=197,
    lremovexattr=198, fremovexattr=199, utime=132, utimes=235, utimensat=280,
    futimesat=261, acct=163, swapon=167, swapoff=168, sethostname=170,
    setdomainname=171, settimeofday=164, clock_settime=227,
)
DENIED = [
    "openat2", "creat", "fork", "vfork", "execve", "execveat", "kill", "tkill",
    "socket", "connect", "accept", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown",
    "bind", "listen", "socketpair", "accept4", "recvmmsg", "sendmmsg", "ptrace",
    "process_vm_readv", "process_vm_writev", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "mkdir", "mkdirat", "rmdir", "link", "linkat", "symlink", "symlinkat",
    "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "truncate",
    "ftruncate", "mknod", "mknodat", "mount", "umount2", "pivot_root", "chroot", "setns",
    "unshare", "reboot", "init_module", "finit_module", "delete_module", "kexec_load",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "setxattr", "lsetxattr",
    "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "utime", "utimes",
    "utimensat", "futimesat", "acct", "swapon", "swapoff", "sethostname",
    "setdomainname", "settimeofday", "clock_settime",
]
OPEN_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # WRONLY RDWR CREAT TRUNC APPEND
CLONE_THREAD = 0x10000
EPERM, ENOSYS = 1, 38


def _bpf(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def build_seccomp_filter(own_pid):
    """Return the BPF program (bytes) of the sandbox's syscall policy."""
    LD_W_ABS, JEQ, JSET, JGE, RET = 0x20, 0x15, 0x45, 0x35, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    errno = lambda e: 0x00050000 | e  # noqa: E731
    arg_lo = lambda i: 16 + 8 * i  # noqa: E731
    prog = [
        _bpf(LD_W_ABS, 0, 0, 4),  # arch
        _bpf(JEQ, 1, 0, AUDIT_ARCH_X86_64),
        _bpf(RET, 0, 0, KILL),
        _bpf(LD_W_ABS, 0, 0, 0),  # syscall number
        _bpf(JGE, 0, 1, 0x40000000),  # x32 ABI
        _bpf(RET, 0, 0, errno(EPERM)),
        _bpf(JEQ, 0, 1, NR["clone3"]),  # glibc falls back to clone, which we can inspect
        _bpf(RET, 0, 0, errno(ENOSYS)),
    ]
    for name in DENIED:
        prog += [_bpf(JEQ, 0, 1, NR[name]), _bpf(RET, 0, 0, errno(EPERM))]
    # open(path, flags), openat(dirfd, path, flags): read-only opens only
    for name, flag_arg in (("open", 1), ("openat", 2)):
        prog += [
            _bpf(JEQ, 0, 4, NR[name]),
            _bpf(LD_W_ABS, 0, 0, arg_lo(flag_arg)),
            _bpf(JSET, 0, 1, OPEN_WRITE_FLAGS),
            _bpf(RET, 0, 0, errno(EPERM)),
            _bpf(RET, 0, 0, ALLOW),
        ]
    # clone: threads only, no new processes
    prog += [
        _bpf(JEQ, 0, 4, NR["clone"]),
        _bpf(LD_W_ABS, 0, 0, arg_lo(0)),
        _bpf(JSET, 1, 0, CLONE_THREAD),
        _bpf(RET, 0, 0, errno(EPERM)),
        _bpf(RET, 0, 0, ALLOW),
    ]
    # tgkill: only signals to ourselves (abort/raise)
    prog += [
        _bpf(JEQ, 0, 4, NR["tgkill"]),
        _bpf(LD_W_ABS, 0, 0, arg_lo(0)),
        _bpf(JEQ, 1, 0, own_pid),
        _bpf(RET, 0, 0, errno(EPERM)),
        _bpf(RET, 0, 0, ALLOW),
    ]
    prog.append(_bpf(RET, 0, 0, ALLOW))
    return b"".join(prog)


def install_seccomp():
    """Install the syscall filter on the calling process (irreversible)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    program = build_seccomp_filter(os.getpid())
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def vm_size_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def enter_sandbox(limits, result_fd):
    """Confine the current (child) process; called before the untrusted code is parsed."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 65536)
    os.chdir(limits["sandbox_dir"])
    cpu = int(math.ceil(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    mem = vm_size_bytes() + limits["memory_mb"] * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    install_seccomp()


# ---------------------------------------------------------------------------------------
# Running a snippet (inside the child)


class NoSolid(Exception):
    """The snippet ran but left no usable CadQuery solid."""


def restricted_import(cq):
    modules = {"cadquery": cq, "math": math}

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name not in modules:
            raise ImportError(f"import of {name!r} is not allowed")
        return modules[name]

    return _import


def run_snippet(code, cq):
    """Execute `code` and return the solid the reference metric would take from it."""
    import builtins

    cleaned = textwrap.dedent(code).strip()
    try:
        tree = ast.parse(cleaned, mode="exec")
    except (SyntaxError, ValueError) as exc:
        raise SyntaxError(str(exc)) from None
    except (RecursionError, MemoryError) as exc:
        raise SyntaxError(f"code too deeply nested to parse ({type(exc).__name__})") from None
    check_ast(tree)
    compiled = compile(tree, "<snippet>", "exec")
    safe_builtins = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}
    safe_builtins["__import__"] = restricted_import(cq)
    namespace = {"__builtins__": safe_builtins, "cq": cq, "cadquery": cq}
    exec(compiled, namespace)
    return pick_solid(namespace, cq)


def pick_solid(namespace, cq):
    """The reference's loading rules: object lookup order, .val(), compound unwrap."""
    found = [(k, v) for k, v in namespace.items()
             if isinstance(v, (cq.Workplane, cq.Solid, cq.Compound))]
    if not found:
        raise NoSolid("no CadQuery object (Workplane, Solid or Compound) in the namespace")
    if len(found) > 1:
        for preferred in PREFERRED_NAMES:
            match = [(k, v) for k, v in found if k == preferred]
            if match:
                found = match
                break
    name, obj = found[0]
    if isinstance(obj, cq.Workplane):
        try:
            obj = obj.val()
        except IndexError:
            raise NoSolid(f"Workplane {name!r} is empty") from None
    if hasattr(obj, "Solids") and callable(getattr(obj, "Solids")):
        solids = obj.Solids()
        if len(solids) == 1:
            obj = solids[0]
        elif not solids:
            raise NoSolid(f"{name!r} holds no solid")
    if not isinstance(obj, (cq.Solid, cq.Compound)):
        raise NoSolid(f"{name!r} is a {type(obj).__name__}, not a Solid or Compound")
    return obj


def b64(array):
    return base64.b64encode(array.tobytes()).decode("ascii")


def principal_axes(inertia, denoise=False):
    """numpy eigh, as the reference metric does: columns are eigenvectors, ascending.

    With `denoise` (the mesh inertia), entries below 1e-12 of the largest are set to zero
    first: they are meshing noise (an axis-aligned part has exactly zero products of
    inertia), and their sign otherwise decides LAPACK's eigenvector signs; on an invalid
    solid whose mesh varies at 1e-17 between runs that made one reference pair's shell IoU
    flip between 0.08 and 0.32. OCC's exact inertia (volume protocol) is used as it is,
    which is what agrees with the reference there.
    """
    import numpy as np

    inertia = np.array(inertia, dtype=np.float64)
    if denoise:
        inertia[np.abs(inertia) < 1e-12 * np.abs(inertia).max()] = 0.0
    _, vecs = np.linalg.eigh(inertia)
    return vecs


def mesh_inertia(vertices, triangles):
    """Inertia tensor (about the centre of mass, density 1) of a closed triangle mesh.

    Polyhedral mass properties after D. Eberly: the divergence theorem turns the volume
    integrals of 1, x, y, z, x^2, ..., xy, ... into sums over triangles of polynomials in
    their corners.
    """
    import numpy as np

    p0, p1, p2 = (vertices[triangles[:, i]] for i in range(3))
    normal = np.cross(p1 - p0, p2 - p0)
    s = p0 + p1
    f1 = s + p2
    f2 = p0 * p0 + p1 * s + p2 * f1
    f3 = p0 * p0 * p0 + p1 * (p0 * p0 + p1 * p1 + p0 * p1) + p2 * f2
    g0, g1, g2 = (f2 + p * (p + f1) for p in (p0, p1, p2))
    volume = (normal[:, 0] * f1[:, 0]).sum() / 6.0
    first = (normal * f2).sum(axis=0) / 24.0  # integrals of x, y, z
    second = (normal * f3).sum(axis=0) / 60.0  # integrals of x^2, y^2, z^2
    mixed = np.empty(3)  # integrals of xy, yz, zx
    for axis in range(3):
        nxt = (axis + 1) % 3
        mixed[axis] = (normal[:, axis] * (p0[:, nxt] * g0[:, axis] + p1[:, nxt] * g1[:, axis]
                                          + p2[:, nxt] * g2[:, axis])).sum() / 120.0
    if abs(volume) < 1e-12:
        return None
    c = first / volume
    xx, yy, zz = second - volume * c * c
    xy = mixed[0] - volume * c[0] * c[1]
    yz = mixed[1] - volume * c[1] * c[2]
    zx = mixed[2] - volume * c[2] * c[0]
    return np.array([[yy + zz, -xy, -zx], [-xy, xx + zz, -yz], [-zx, -yz, xx + yy]])


def tessellate(shape):
    """Mesh like CadQuery's STL export (0.1 linear relative, 0.1 angular) and read it back.

    Returns float32-rounded vertices (STL stores float32) and triangles oriented outwards.
    """
    import numpy as np
    from OCP.BRep import BRep_Tool
    from OCP.BRepMesh import BRepMesh_IncrementalMesh
    from OCP.TopAbs import TopAbs_FACE, TopAbs_REVERSED
    from OCP.TopExp import TopExp_Explorer
    from OCP.TopLoc import TopLoc_Location
    from OCP.TopoDS import TopoDS

    wrapped = shape.wrapped
    BRepMesh_IncrementalMesh(wrapped, MESH_LINEAR_TOLERANCE, True, MESH_ANGULAR_TOLERANCE, False)
    vertices, triangles, offset = [], [], 0
    explorer = TopExp_Explorer(wrapped, TopAbs_FACE)
    while explorer.More():
        face = TopoDS.Face_s(explorer.Current())
        explorer.Next()
        loc = TopLoc_Location()
        tri = BRep_Tool.Triangulation_s(face, loc)
        if tri is None:
            continue
        n = tri.NbNodes()
        node = tri.Node
        coords = np.array([node(i).Coord() for i in range(1, n + 1)], dtype=np.float64)
        if not loc.IsIdentity():
            trsf = loc.Transformation()
            coords = np.array([tri.Node(i).Transformed(trsf).Coord() for i in range(1, n + 1)])
        vertices.append(coords.reshape(-1, 3))
        corner = tri.Triangle
        face_tris = np.array([corner(i).Get() for i in range(1, tri.NbTriangles() + 1)],
                             dtype=np.int64).reshape(-1, 3) - 1 + offset
        if face.Orientation() == TopAbs_REVERSED:
            face_tris = face_tris[:, [0, 2, 1]]
        triangles.append(face_tris)
        offset += n
    verts = (np.concatenate(vertices) if vertices else np.zeros((0, 3))).astype(np.float32)
    verts = verts.astype(np.float64)
    tris = (np.concatenate(triangles) if triangles else np.zeros((0, 3))).astype(np.uint32)
    return verts, tris


def edge_polylines(shape):
    """The B-rep edges as polylines on the existing mesh, with a seam flag per edge."""
    import numpy as np
    from OCP.BRep import BRep_Tool
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE
    from OCP.TopExp import TopExp
    from OCP.TopLoc import TopLoc_Location
    from OCP.TopoDS import TopoDS
    from OCP.TopTools import TopTools_IndexedDataMapOfShapeListOfShape

    wrapped = shape.wrapped
    points, offsets, seams = [], [0], []
    edge_faces = TopTools_IndexedDataMapOfShapeListOfShape()
    TopExp.MapShapesAndAncestors_s(wrapped, TopAbs_EDGE, TopAbs_FACE, edge_faces)
    for i in range(1, edge_faces.Extent() + 1):
        edge = TopoDS.Edge_s(edge_faces.FindKey(i))
        faces = edge_faces.FindFromIndex(i)
        if BRep_Tool.Degenerated_s(edge) or faces.Extent() == 0:
            continue
        face = TopoDS.Face_s(faces.First())
        loc = TopLoc_Location()
        tri = BRep_Tool.Triangulation_s(face, loc)
        if tri is None:
            continue
        poly = BRep_Tool.PolygonOnTriangulation_s(edge, tri, loc)
        if poly is None:
            continue
        trsf = loc.Transformation()
        nodes = poly.Nodes()
        for j in range(nodes.Lower(), nodes.Upper() + 1):
            p = tri.Node(nodes.Value(j)).Transformed(trsf)
            points.append((p.X(), p.Y(), p.Z()))
        offsets.append(len(points))
        seams.append(1 if BRep_Tool.IsClosed_s(edge, face) else 0)
    return {
        "points": b64(np.asarray(points, dtype=np.float64).reshape(-1, 3)),
        "offsets": b64(np.asarray(offsets, dtype=np.uint32)),
        "seam": b64(np.asarray(seams, dtype=np.uint8)),
    }


def matrix_of(mat):
    """An OCC gp_Mat (1-based) as a 3x3 numpy array."""
    import numpy as np

    return np.array([[mat.Value(i, j) for j in (1, 2, 3)] for i in (1, 2, 3)])


def describe(shape, want_mesh, want_edges):
    """Mass properties, bounding box, mesh, principal axes: everything the metrics need."""
    import numpy as np
    from OCP.BRepGProp import BRepGProp
    from OCP.GProp import GProp_GProps

    # One integration for what CadQuery's Volume(), Center() and matrixOfInertia() would
    # each integrate again (the same VolumeProperties call for a Solid or Compound).
    mass = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape.wrapped, mass)
    volume = mass.Mass()
    center = mass.CentreOfMass()
    inertia = matrix_of(mass.MatrixOfInertia())
    bb = shape.BoundingBox()
    props = {
        "volume": volume,
        "center": [center.X(), center.Y(), center.Z()],
        "inertia": inertia.ravel().tolist(),
        "bbox": [bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax],
        "solid_count": len(shape.Solids()),
        "valid": bool(shape.isValid()),
    }
    out = {"props": props}
    r_g = math.sqrt(np.trace(inertia) / (2.0 * volume)) if volume > 0 else float("nan")
    props["r_g"] = r_g if math.isfinite(r_g) else None
    if want_mesh or want_edges:
        verts, tris = tessellate(shape)
        if want_mesh:
            out["mesh"] = {"vertices": b64(verts), "triangles": b64(tris)}
            axes = None
            if props["r_g"] and len(tris):
                normalised = (verts - np.array(props["center"])) * (1.0 / r_g)
                inertia_mesh = mesh_inertia(normalised, tris.astype(np.int64))
                if inertia_mesh is not None:
                    axes = principal_axes(inertia_mesh, denoise=True)
            props["mesh_axes"] = axes.ravel().tolist() if axes is not None else None
        if want_edges:
            out["edges"] = edge_polylines(shape)
    return out


def classify_exception(exc):
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "OutOfMemory" in text or "bad_alloc" in text:
        return "oom", text
    if isinstance(exc, Rejected):
        return "rejected", str(exc)
    if isinstance(exc, SyntaxError):
        return "syntax", text
    if isinstance(exc, NoSolid):
        return "no_solid", str(exc)
    if isinstance(exc, RecursionError):
        return "runtime", "RecursionError: maximum recursion depth exceeded"
    return "runtime", text


def outcome_of(code, cq, want_mesh, want_edges):
    """Run one snippet; return (outcome dict, shape or None)."""
    start = time.perf_counter()
    shape = None
    try:
        shape = run_snippet(code, cq)
        result = {"status": "ok", "message": ""}
        try:
            result.update(describe(shape, want_mesh, want_edges))
        except MemoryError:
            raise
        except Exception as exc:  # a solid that loads but cannot be measured or meshed
            result["message"] = f"measuring the solid failed: {type(exc).__name__}: {exc}"
    except BaseException as exc:  # noqa: BLE001 - every failure of untrusted code is data
        status, message = classify_exception(exc)
        result = {"status": status, "message": message[:2000]}
        shape = None
    result["seconds"] = time.perf_counter() - start
    return result, shape


def normalised_shape(shape, center, r_g):
    from OCP.BRepBuilderAPI import BRepBuilderAPI_Transform
    from OCP.gp import gp_Pnt, gp_Trsf, gp_Vec

    move = gp_Trsf()
    move.SetTranslation(gp_Vec(-center[0], -center[1], -center[2]))
    scale = gp_Trsf()
    scale.SetScale(gp_Pnt(0.0, 0.0, 0.0), 1.0 / r_g)
    return BRepBuilderAPI_Transform(shape.wrapped, scale.Multiplied(move), True).Shape()


def occ_volume(shape):
    from OCP.BRepGProp import BRepGProp
    from OCP.GProp import GProp_GProps

    props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape, props)
    return props.Mass()


def boolean_volume(kind, a, b):
    """Volume of the OCC boolean `kind` (Common or Cut) of a and b, or None if it failed."""
    from OCP import BRepAlgoAPI
    from OCP.TopTools import TopTools_ListOfShape

    op = getattr(BRepAlgoAPI, f"BRepAlgoAPI_{kind}")()
    op.SetUseOBB(True)
    op.SetRunParallel(False)
    args, tools = TopTools_ListOfShape(), TopTools_ListOfShape()
    args.Append(a)
    tools.Append(b)
    op.SetArguments(args)
    op.SetTools(tools)
    op.Build()
    if not op.IsDone():
        return None
    return occ_volume(op.Shape())


SIGN_PATTERNS = [(1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)]


def flip_between(p, q):
    """The sign flip of the principal axes that takes sign pattern p to q."""
    return tuple(a * b for a, b in zip(p, q))


# The three mirrors and three half-turns that relate two of the sign patterns.
PATTERN_FLIPS = {flip_between(p, q) for p in SIGN_PATTERNS for q in SIGN_PATTERNS if p != q}
# Faces of a mirror-symmetric solid match their mirror images to ~1e-15 in the principal
# frame (measured on the reference samples); asymmetric ones miss by 1e-2 or more.
SYMMETRY_TOLERANCE = 1e-9
# Symmetry is looked for on solids with at most this many faces (the face-to-face comparison
# is quadratic); larger ones run every pattern.
MAX_SYMMETRY_FACES = 256


def box_corners(bbox):
    import numpy as np

    lo, hi = np.array(bbox[:3]), np.array(bbox[3:])
    return np.array([[(hi if (k >> i) & 1 else lo)[i] for i in range(3)] for k in range(8)])


def face_moments(shape, center, axes, r_g):
    """Per face: area, centroid and second moments, in the normalised principal frame.

    One row per face, `[area, y0, y1, y2, J00, J01, J02, J11, J12, J22]`, with y the
    centroid and J the inertia about it, both in the principal axes after the 1/r_g scale;
    None for a solid of more than MAX_SYMMETRY_FACES faces.
    """
    import numpy as np
    from OCP.BRepGProp import BRepGProp
    from OCP.GProp import GProp_GProps
    from OCP.TopAbs import TopAbs_FACE
    from OCP.TopExp import TopExp_Explorer

    rows = []
    explorer = TopExp_Explorer(shape.wrapped, TopAbs_FACE)
    upper = np.triu_indices(3)
    while explorer.More():
        if len(rows) == MAX_SYMMETRY_FACES:
            return None
        props = GProp_GProps()
        BRepGProp.SurfaceProperties_s(explorer.Current(), props)
        explorer.Next()
        c, inertia = props.CentreOfMass(), matrix_of(props.MatrixOfInertia())
        centroid = axes.T @ (np.array([c.X(), c.Y(), c.Z()]) - center) / r_g
        moments = (axes.T @ inertia @ axes / r_g**4)[upper]
        rows.append(np.concatenate([[props.Mass() / r_g**2], centroid, moments]))
    return np.array(rows).reshape(-1, 10)


def principal_symmetries(table):
    """The sign flips of the principal axes (mirrors and half-turns) that map the solid onto
    itself: every face has a face with the mirrored area, centroid and moments, and back."""
    import numpy as np

    found = set()
    if table is None or len(table) == 0:
        return found
    upper = np.triu_indices(3)
    for flip in PATTERN_FLIPS:
        t = np.array(flip, dtype=np.float64)
        signs = np.concatenate([[1.0], t, np.outer(t, t)[upper]])
        gap = np.abs((table * signs)[:, None, :] - table[None, :, :]).max(axis=2)
        if max(gap.min(axis=1).max(), gap.min(axis=0).max()) <= SYMMETRY_TOLERANCE:
            found.add(flip)
    return found


def pattern_classes(symmetries):
    """Group the sign patterns that give the same aligned solid, so one boolean serves a group.

    Patterns p and q differ by the flip p*q; when that flip maps either solid onto itself,
    the two placements are congruent and their common volumes are equal.
    """
    group = list(range(len(SIGN_PATTERNS)))
    for i, p in enumerate(SIGN_PATTERNS):
        for j in range(i + 1, len(SIGN_PATTERNS)):
            if flip_between(p, SIGN_PATTERNS[j]) in symmetries:
                old, new = group[j], group[i]
                group = [new if g == old else g for g in group]
    classes = {}
    for index, g in enumerate(group):
        classes.setdefault(g, []).append(index)
    return list(classes.values())


def volume_iou(gt_shape, gt_props, pred_shape, pred_props, all_patterns=False, floor=None):
    """Exact solid IoU after centroid + 1/r_g normalisation and principal-axis alignment.

    Best of the 4 sign patterns, like the shell protocol. On shapes that fail OCC's validity
    check the booleans depend on memory layout: stable_volume_iou repeats those. Two savings,
    unless `all_patterns`: patterns that a mirror symmetry of a (valid) solid
    makes congruent share one boolean (congruent placements give common volumes equal up to
    the boolean's own noise, measured up to 2e-5 relative, e.g. a cylinder whose seam lands
    elsewhere), and a candidate is skipped when an upper bound of its IoU cannot beat the
    best found so far: the common volume is at most min(v_gt, v_pred, volume of the overlap
    of their bounding boxes), or the `floor` already reached. Returns (IoU or None (also
    when nothing could beat `floor`), message, booleans run).
    """
    import numpy as np
    from OCP.BRepBuilderAPI import BRepBuilderAPI_Transform
    from OCP.gp import gp_Trsf

    shapes, axes, volumes, corners, symmetries = [], [], [], [], set()
    both_valid = bool(gt_props.get("valid")) and bool(pred_props.get("valid"))
    for shape, props in ((gt_shape, gt_props), (pred_shape, pred_props)):
        r_g = props.get("r_g")
        if not r_g:
            return None, "a solid has no positive volume", 0
        center = np.array(props["center"])
        shapes.append(normalised_shape(shape, center, r_g))
        inertia = np.array(props["inertia"]).reshape(3, 3) / r_g**5
        axes.append(principal_axes(inertia))
        volumes.append(props["volume"] / r_g**3)
        corners.append((box_corners(props["bbox"]) - center) / r_g)
        if both_valid and not all_patterns:
            symmetries |= principal_symmetries(face_moments(shape, center, axes[-1], r_g))
    gt_lo, gt_hi = corners[0].min(axis=0), corners[0].max(axis=0)
    bounds, rotations = [], []
    for signs in SIGN_PATTERNS:
        rot = axes[0] @ (axes[1] @ np.diag(signs)).T
        moved = corners[1] @ rot.T
        overlap = np.clip(np.minimum(gt_hi, moved.max(axis=0)) - np.maximum(gt_lo, moved.min(axis=0)), 0, None)
        bound_inter = min(volumes[0], volumes[1], float(np.prod(overlap)))
        bounds.append(bound_inter / max(volumes[0] + volumes[1] - bound_inter, 1e-300))
        rotations.append(rot)
    # congruent patterns have one IoU, so each of their bounds holds for it
    candidates = [(min(bounds[i] for i in members), members)
                  for members in pattern_classes(symmetries)]
    candidates.sort(key=lambda c: -c[0])
    best, failures, booleans = None, [], 0
    for bound, members in candidates:
        reached = max(v for v in (best, floor, -1.0) if v is not None)
        if bound <= reached and not all_patterns:
            break
        booleans += 1
        rot = rotations[members[0]]
        trsf = gp_Trsf()
        trsf.SetValues(*rot[0], 0.0, *rot[1], 0.0, *rot[2], 0.0)
        moved = BRepBuilderAPI_Transform(shapes[1], trsf, True).Shape()
        inter = boolean_volume("Common", shapes[0], moved)
        union = volumes[0] + volumes[1] - inter if inter is not None else 0.0
        if inter is None or union <= 0:
            failures.extend(str(SIGN_PATTERNS[i]) for i in members)
            continue
        iou = min(max(inter / union, 0.0), 1.0)
        best = iou if best is None else max(best, iou)
    message = f"boolean failed for sign patterns {', '.join(failures)}" if failures else ""
    return best, message, booleans


# ---------------------------------------------------------------------------------------
# Parent side: fork, frames, deadlines


def write_frame(fd, obj):
    data = json.dumps(obj).encode("utf-8")
    payload = struct.pack(">I", len(data)) + data
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sandbox_selftest(probe_dir):
    """Try what the syscall filter must stop, bypassing the AST layer; report each result."""
    import socket

    def attempt(action):
        try:
            action()
            return "allowed"
        except OSError:
            return "blocked"

    def spawn():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    target = os.path.join(probe_dir, "written-by-sandbox")
    return {
        "open_for_write": attempt(lambda: os.close(os.open(target, os.O_WRONLY | os.O_CREAT))),
        "socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        "fork": attempt(spawn),
        "exec": attempt(lambda: os.execv("/bin/true", ["/bin/true"])),
        "unlink": attempt(lambda: os.unlink(probe_dir)),
        "mkdir": attempt(lambda: os.mkdir(os.path.join(probe_dir, "d"))),
        "kill_parent": attempt(lambda: os.kill(os.getppid(), 0)),
        "read_only_open": attempt(lambda: os.close(os.open("/proc/self/status", os.O_RDONLY))),
    }


def child_main(request, cq, result_fd, limits):
    enter_sandbox(limits, result_fd)
    gc.disable()
    if request["op"] == "sandbox_selftest":
        write_frame(result_fd, sandbox_selftest(request["probe_dir"]))
        return
    want_mesh = request.get("mesh", True)
    want_edges = request.get("edges", False)
    if request["op"] == "exec":
        outcome, _ = outcome_of(request["code"], cq, want_mesh, want_edges)
        write_frame(result_fd, outcome)
        return
    # pair: gt, then pred, then the volume IoU, one frame each
    gt, gt_shape = outcome_of(request["gt"], cq, want_mesh, want_edges)
    write_frame(result_fd, gt)
    pred, pred_shape = outcome_of(request["pred"], cq, want_mesh, want_edges)
    write_frame(result_fd, pred)
    if not request.get("volume", True):
        return
    if gt_shape is None or pred_shape is None or "props" not in gt or "props" not in pred:
        write_frame(result_fd, {"volume_iou": None, "message": "not computed: a side is invalid"})
        return
    start = time.perf_counter()
    try:
        iou, message, booleans = stable_volume_iou(request, cq, gt, gt_shape, pred, pred_shape)
    except BaseException as exc:  # noqa: BLE001
        iou, message, booleans = None, f"{type(exc).__name__}: {exc}", 0
    write_frame(result_fd, {"volume_iou": iou, "message": message, "booleans": booleans,
                            "seconds": time.perf_counter() - start})


# Builds of a pair, counting the first, whose volume IoU is taken when a solid fails OCC's
# check (see stable_volume_iou).
INVALID_SOLID_BUILDS = 4


def stable_volume_iou(request, cq, gt, gt_shape, pred, pred_shape):
    """volume_iou, made repeatable on solids that fail OCC's validity check.

    On such a solid OCC's boolean result is a function of the heap addresses the shapes were
    built at (measured on a reference sample with ASLR off: the same allocation history
    always gives the same IoU, another one 0.17 or 0.09 instead of 1.0; booleans rerun on
    the same shapes, with fuzzy values or with shifts of 1e-9..1e-5, repeat the failure).
    Every failure seen loses common volume, so the pair is rebuilt in new memory
    (INVALID_SOLID_BUILDS builds in all) and the best IoU is kept: over 21 heap layouts of
    that sample 11 of 84 builds failed and the best of four was right every time. Valid
    pairs take the single build.
    """
    all_patterns = bool(request.get("all_patterns", False))
    iou, message, booleans = volume_iou(gt_shape, gt["props"], pred_shape, pred["props"],
                                        all_patterns)
    if gt["props"].get("valid") and pred["props"].get("valid"):
        return iou, message, booleans
    seen, held = ([] if iou is None else [iou]), []
    for attempt in range(1, INVALID_SOLID_BUILDS):
        # new shapes must land at new addresses: keep a differently sized block alive
        held.append(bytearray(4096 * attempt * attempt))
        again_gt, again_gt_shape = outcome_of(request["gt"], cq, False, False)
        again_pred, again_pred_shape = outcome_of(request["pred"], cq, False, False)
        if (again_gt_shape is None or again_pred_shape is None
                or "props" not in again_gt or "props" not in again_pred):
            break
        # only sign patterns that could beat the best so far are run again
        value, note, count = volume_iou(again_gt_shape, again_gt["props"], again_pred_shape,
                                        again_pred["props"], all_patterns, floor=iou)
        booleans += count
        if value is not None:
            seen.append(value)
            if iou is None or value > iou:
                iou, message = value, note
    if seen and max(seen) - min(seen) > 1e-6:
        shown = ", ".join(f"{v:.4f}" for v in seen)
        message = (f"{message}; " if message else "") + (
            f"a solid fails OCC's check and its booleans vary between builds ({shown}): "
            "the best is kept")
    return iou, message, booleans


def death_outcome(status_word, phase_seconds):
    return {"status": status_word[0], "message": status_word[1], "seconds": phase_seconds}


def describe_death(wait_status, timed_out, timeout_s):
    if timed_out:
        return "timeout", f"killed after the {timeout_s:g} s wall-clock limit"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit exceeded"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return "crash", f"the sandboxed process died from signal {name}"
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    return "crash", f"the sandboxed process exited with status {code} before reporting"


def run_in_child(request, cq, limits, expected_frames):
    """Fork, run the request sandboxed, collect up to `expected_frames` frames."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            child_main(request, cq, write_fd, limits)
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    os.close(write_fd)
    timeout = limits["timeout_s"]
    frames, buffer, timed_out = [], b"", False
    deadline = time.monotonic() + timeout
    phase_start = time.perf_counter()
    phase_seconds = []
    eof = False
    while not eof:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            eof = True
            break
        buffer += chunk
        while len(buffer) >= 4:
            size = struct.unpack(">I", buffer[:4])[0]
            if len(buffer) < 4 + size:
                break
            frames.append(json.loads(buffer[4:4 + size]))
            buffer = buffer[4 + size:]
            now = time.perf_counter()
            phase_seconds.append(now - phase_start)
            phase_start = now
            deadline = time.monotonic() + timeout  # each phase gets the full limit
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    death = None
    if len(frames) < expected_frames:
        death = describe_death(wait_status, timed_out, timeout)
    return frames, death, time.perf_counter() - phase_start


def handle(request, cq, limits):
    op = request.get("op")
    if op == "ping":
        return {"pong": True}
    req_limits = dict(limits)
    for key in ("timeout_s", "memory_mb"):
        if request.get(key):
            req_limits[key] = request[key]
    req_limits["cpu_s"] = req_limits["timeout_s"] * 2 + 1
    if op == "sandbox_selftest":
        frames, death, _ = run_in_child(request, cq, req_limits, 1)
        return {"result": frames[0] if frames else {"died": death[1]}}
    if op == "exec":
        frames, death, elapsed = run_in_child(request, cq, req_limits, 1)
        return {"result": frames[0] if frames else death_outcome(death, elapsed)}
    if op == "pair":
        expected = 3 if request.get("volume", True) else 2
        frames, death, elapsed = run_in_child(request, cq, req_limits, expected)
        response = {}
        if len(frames) >= 1:
            response["gt"] = frames[0]
        else:
            response["gt"] = death_outcome(death, elapsed)
        if len(frames) >= 2:
            response["pred"] = frames[1]
        elif len(frames) == 1:
            response["pred"] = death_outcome(death, elapsed)
        else:
            # the gt side took the child down: judge the prediction on its own
            single = dict(request, op="exec", code=request["pred"])
            pf, pdeath, pelapsed = run_in_child(single, cq, req_limits, 1)
            response["pred"] = pf[0] if pf else death_outcome(pdeath, pelapsed)
        if expected == 3:
            if len(frames) >= 3:
                response["volume"] = frames[2]
            else:
                message = f"volume IoU not computed: {death[1]}" if death else "not computed"
                response["volume"] = {"volume_iou": None, "message": message}
        return response
    return {"error": f"unknown op {op!r}"}


# Plane.named's table: name -> (xDir, normal), as CadQuery 2.8 spells it out.
NAMED_PLANES = {
    "XY": ((1, 0, 0), (0, 0, 1)), "YZ": ((0, 1, 0), (1, 0, 0)), "ZX": ((0, 0, 1), (0, 1, 0)),
    "XZ": ((1, 0, 0), (0, -1, 0)), "YX": ((0, 1, 0), (0, 0, -1)), "ZY": ((0, 0, 1), (-1, 0, 0)),
    "front": ((1, 0, 0), (0, 0, 1)), "back": ((-1, 0, 0), (0, 0, -1)),
    "left": ((0, 0, 1), (-1, 0, 0)), "right": ((0, 0, -1), (1, 0, 0)),
    "top": ((1, 0, 0), (0, 1, 0)), "bottom": ((1, 0, 0), (0, -1, 0)),
}


def plane_key(plane):
    return tuple(v.toTuple() for v in (plane.origin, plane.xDir, plane.yDir, plane.zDir))


def build_only_the_named_plane(cq):
    """Make `Plane.named` build the one plane asked for instead of all twelve.

    CadQuery 2.8's `Plane.named` constructs its whole table of twelve planes to return one,
    and every `Workplane(...)`, including the copy behind each chained call, goes through
    it: measured, 7 of a reference program's 19 ms. The replacement calls `Plane` with the
    same arguments for the name asked for (and the original for anything else, so errors
    are unchanged); it is installed only if it gives exactly the original's planes for
    every name, checked here. Returns whether it was installed.
    """
    plane_cls = cq.Plane
    try:
        original = plane_cls.__dict__["named"].__func__
    except (KeyError, AttributeError):  # not the classmethod of CadQuery 2.8
        return False

    def named(cls, stdName, origin=(0, 0, 0)):
        try:
            x_dir, normal = NAMED_PLANES[stdName]
        except (KeyError, TypeError):
            return original(cls, stdName, origin)
        return plane_cls(origin, x_dir, normal)

    for name in NAMED_PLANES:
        for origin in ((0, 0, 0), (0.25, -1.5, 3.0)):
            if plane_key(named(plane_cls, name, origin)) != plane_key(original(plane_cls, name, origin)):
                return False
    plane_cls.named = classmethod(named)
    return True


def warm_up(cq):
    """Exercise sketch, extrude, booleans, meshing and mass properties once before forking,
    so every child starts with OCC's lazily built state already in place."""
    wp = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))
    a = wp.add(wp.moveTo(0, 0).lineTo(1, 0).threePointArc((1.5, 0.5), (1, 1)).lineTo(0, 1)
               .close()).add(wp.moveTo(0.5, 0.5).circle(0.2)).extrude(0.5)
    b = wp.add(wp.moveTo(0.2, 0.2).circle(0.3)).extrude(1.0, both=True)
    shape = a.union(b).cut(wp.moveTo(0.8, 0.5).circle(0.1).extrude(0.3)).val()
    described = describe(shape, True, True)
    volume_iou(shape, described["props"], shape, described["props"])


def main():
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        print(json.dumps({"ready": False, "error": "the sandbox's seccomp policy is defined "
                          "for Linux x86_64 only"}), flush=True)
        return 2
    try:
        import cadquery as cq
        from OCP.OSD import OSD_ThreadPool

        # One OCC thread: booleans in a forked child deadlock on a pool started pre-fork.
        OSD_ThreadPool.DefaultPool_s(1)
        plane_fix = build_only_the_named_plane(cq)
        warm_up(cq)
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}",
                          "trace": traceback.format_exc()}), flush=True)
        return 1
    # The Rust pool makes (and removes) the folder; run by hand, the worker owns its own.
    sandbox_dir = os.environ.get("CADRAG_SANDBOX_DIR")
    if sandbox_dir:
        return serve(cq, sandbox_dir, plane_fix)
    sandbox_dir = tempfile.mkdtemp(prefix="cadrag-sandbox-")
    try:
        return serve(cq, sandbox_dir, plane_fix)
    finally:
        shutil.rmtree(sandbox_dir, ignore_errors=True)


def back_memory_with_huge_pages():
    """Ask the kernel to back the worker's heap and anonymous mappings with 2 MiB pages.

    Every pair forks this process: the fork copies one page-table entry per 4 KiB page of
    its anonymous memory (about 185 MB once cadquery is imported) and the child's exit tears
    them down again; with huge pages it is one entry per 2 MiB, and a child's first write
    to one still copies only 4 KiB. Best effort: without transparent huge pages or
    MADV_COLLAPSE (Linux 6.1) memory stays as it was; CADRAG_HUGE_PAGES=0 skips it (to
    compare). Returns the MiB now in huge pages.
    """
    import ctypes

    MADV_HUGEPAGE, MADV_COLLAPSE, HUGE = 14, 25, 1 << 21
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as maps:
            regions = [line.split() for line in maps]
        for fields in regions:
            if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            lo, hi = (lo + HUGE - 1) & ~(HUGE - 1), hi & ~(HUGE - 1)
            if hi > lo and libc.madvise(lo, hi - lo, MADV_HUGEPAGE) == 0:
                libc.madvise(lo, hi - lo, MADV_COLLAPSE)
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) // 1024
    except (OSError, AttributeError, ValueError):  # no /proc files or no madvise here
        pass
    return 0


def serve(cq, sandbox_dir, plane_fix):
    """Say ready, then answer JSON-line requests from stdin until it closes."""
    limits = {
        "timeout_s": float(os.environ.get("CADRAG_TIMEOUT_S", "10")),
        "memory_mb": int(os.environ.get("CADRAG_MEMORY_MB", "2048")),
        "sandbox_dir": sandbox_dir,
    }
    gc.collect()
    gc.freeze()  # children then do not touch (and copy) the parent's object pages
    huge_mb = back_memory_with_huge_pages() if os.environ.get("CADRAG_HUGE_PAGES") != "0" else 0
    print(json.dumps({"ready": True, "protocol": PROTOCOL_VERSION,
                      "cadquery": cq.__version__, "sandbox_dir": sandbox_dir,
                      "python": sys.version.split()[0], "named_plane_fix": plane_fix,
                      "huge_pages_mb": huge_mb}),
          flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = {}
        try:
            request = json.loads(line)
            response = handle(request, cq, limits)
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the worker
            request = request if isinstance(request, dict) else {}
            response = {"error": f"{type(exc).__name__}: {exc}"}
        response["seq"] = request.get("seq")
        sys.stdout.write(json.dumps(response) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
