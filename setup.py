"""mmunirep: UniRepLKNet for OpenMMLab 2.0 (MMDetection 3.x, MMSegmentation 1.x).

The dependency ranges below are what mmunirep really supports. `scripts/install.sh` installs one
pinned, tested set of them (requirements/runtime.txt) plus torch and a locally built mmcv; users
with a working torch + mmcv can `pip install --no-build-isolation -e .` and keep theirs.
"""

import glob
import importlib.util
import os
import shutil
import subprocess

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# What OpenMMLab's packages ship in ``<package>/.mim/``: mim reads ``.mim/model-index.yml`` (the
# configs and their results) and runs ``.mim/tools/train.py`` / ``test.py``;
# ``mmunirep.utils.config_path`` finds the configs there. Of a git checkout, only the files git
# tracks (no stray or ignored files); of an unpacked sdist, what MANIFEST.in put in it; in both,
# only these suffixes. The scripts that work only from a checkout live in scripts/, outside it.
MIM_CONTENT = ('configs', 'tools', 'demo', 'model-index.yml')
MIM_SUFFIXES = ('.py', '.sh', '.yml')
OPS_SOURCES = os.path.join('mmunirep', 'ops', 'csrc')


def load_cuda_archs():
    """mmunirep/ops/cuda_archs.py, by its path (the build does not import the package)."""
    path = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'mmunirep', 'ops', 'cuda_archs.py'
    )
    spec = importlib.util.spec_from_file_location('mmunirep_cuda_archs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_cxx_runtime():
    """Link arguments that make the extension use the C++ runtime torch has loaded.

    A toolchain whose driver finds only the static libstdc++ (as the /opt/gcc one of our GPU
    machines) links a private copy of the C++ runtime into the extension. Such an extension imports
    and computes, but the errors torch's libc10 throws (TORCH_CHECK) are caught by the private copy
    and the process dies of a segmentation fault instead of raising. Linking the very
    libstdc++.so.6 of this process (read from /proc/self/maps; Linux only, as CUDA extensions are)
    satisfies those symbols first, so nothing of the static archive is linked in.
    """
    import torch  # noqa: F401  (loads libstdc++.so.6)

    try:
        with open('/proc/self/maps') as f:
            paths = {line.split()[-1] for line in f if '/libstdc++.so' in line}
    except OSError:
        return []
    return sorted(paths)[:1]


def get_extensions():
    """``mmunirep._ext``: the depthwise-conv op of ops/csrc, mmcv-style.

    Built when CUDA is available or ``FORCE_CUDA=1`` (nvcc needed, no GPU needed);
    ``MMUNIREP_WITH_OPS=0`` skips it. Without it the op falls back to ``F.conv2d``.
    """
    if os.getenv('MMUNIREP_WITH_OPS', '1') == '0':
        return []
    try:
        import torch
        from torch.utils.cpp_extension import CUDAExtension
    except ImportError:
        return []
    if not (torch.cuda.is_available() or os.getenv('FORCE_CUDA', '0') == '1'):
        return []
    if getattr(torch.version, 'hip', None):
        # the kernels are written for CUDA and have not been hipified or tested on ROCm: install
        # without the extension (the op falls back to F.conv2d) rather than fail the install
        print('mmunirep: a ROCm build of torch; the CUDA depthwise-conv extension is not built')
        return []
    if not os.getenv('TORCH_CUDA_ARCH_LIST'):
        # 8.0;8.6;9.0+PTX plus the visible GPUs that those do not run on natively
        os.environ['TORCH_CUDA_ARCH_LIST'] = load_cuda_archs().default_arch_list()
    root = OPS_SOURCES
    sources = sorted(
        glob.glob(os.path.join(root, 'pytorch', '*.cpp'))
        + glob.glob(os.path.join(root, 'pytorch', 'cpu', '*.cpp'))
        + glob.glob(os.path.join(root, 'pytorch', 'cuda', '*.cu'))
    )
    include_dirs = [os.path.abspath(os.path.join(root, 'common', 'cuda'))]
    # torch's CUDA headers include cuSPARSE / cuBLAS headers; a toolkit with only the compiler and
    # runtime lacks them, while torch's pip dependencies (nvidia-*) ship them in site-packages
    try:
        import nvidia

        for base in nvidia.__path__:
            include_dirs += sorted(glob.glob(os.path.join(base, '*', 'include')))
            include_dirs += sorted(glob.glob(os.path.join(base, 'include')))
    except ImportError:
        pass
    return [
        CUDAExtension(
            name='mmunirep._ext',
            sources=sources,
            include_dirs=include_dirs,
            define_macros=[('MMUNIREP_WITH_CUDA', None)],
            # no -std: torch's BuildExtension adds the standard of its own build (C++17 for torch
            # 2.11, C++20 for 2.14)
            extra_compile_args={'cxx': ['-O3'], 'nvcc': ['-O3', '--expt-relaxed-constexpr']},
            extra_link_args=shared_cxx_runtime(),
        )
    ]


class BuildPyWithMim(build_py):
    """``build_py`` that also copies :data:`MIM_CONTENT` into ``mmunirep/.mim/`` of the build.

    Only for built packages (wheels, ``pip install .``, an sdist's install): an editable install
    runs from this checkout, whose ``configs/`` ``config_path`` finds. Written here rather than
    with mmdet's ``add_mim_extension`` (which copies into the source tree according to
    ``sys.argv``) so the checkout stays clean.
    """

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        root = os.path.dirname(os.path.abspath(__file__))
        mim = os.path.join(self.build_lib, 'mmunirep', '.mim')
        if os.path.isdir(mim):
            shutil.rmtree(mim)
        for rel in mim_files(root):
            os.makedirs(os.path.dirname(os.path.join(mim, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(root, rel), os.path.join(mim, rel))


def git_tracked(root):
    """The files git tracks under :data:`MIM_CONTENT` when ``root`` is the top of a git checkout
    (untracked and ignored files, as a work dir under tools/, stay out of the package), else
    None (an unpacked sdist: MANIFEST.in chose its files)."""
    try:
        top = subprocess.run(
            ['git', 'rev-parse', '--show-toplevel'],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if os.path.realpath(top) != os.path.realpath(root):
            return None
        out = subprocess.run(
            ['git', 'ls-files', '-z', '--', *MIM_CONTENT],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [f for f in out.split('\0') if f and os.path.isfile(os.path.join(root, f))]


def mim_files(root):
    """The paths (relative to ``root``) of what goes into ``mmunirep/.mim/``."""
    keep = lambda rel: rel.endswith(MIM_SUFFIXES)  # noqa: E731
    tracked = git_tracked(root)
    if tracked:
        return sorted(rel for rel in tracked if keep(rel))
    files = []
    for name in MIM_CONTENT:
        src = os.path.join(root, name)
        if not os.path.exists(src):
            raise FileNotFoundError(
                f'{src} is missing: the package ships it in .mim/ '
                '(an sdist without it was made without MANIFEST.in)'
            )
        if os.path.isfile(src):
            files.append(name)
            continue
        for base, dirs, names in os.walk(src):
            dirs[:] = sorted(d for d in dirs if not d.startswith(('.', '__pycache__')))
            for f in sorted(names):
                rel = os.path.relpath(os.path.join(base, f), root).replace(os.sep, '/')
                if keep(rel):
                    files.append(rel)
    return sorted(files)


def get_cmdclass():
    cmdclass = {'build_py': BuildPyWithMim}
    try:
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        return cmdclass
    cmdclass['build_ext'] = BuildExtension
    return cmdclass


def read_version():
    scope = {}
    with open(os.path.join('mmunirep', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmunirep',
    version=read_version(),
    description='UniRepLKNet large-kernel ConvNets for MMDetection 3.x and MMSegmentation 1.x',
    long_description=open('README.md').read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['mmunirep', 'mmunirep.*']),
    # The backbone itself needs only these three. torch 2.4 is the first with the APIs we call:
    # torch.amp.custom_fwd(device_type=...), torch.get_autocast_dtype, add_safe_globals.
    install_requires=['torch>=2.4', 'mmengine>=0.10.0,<1.0', 'timm>=0.9'],
    extras_require={
        # mmdet 3.3 / mmseg 1.2 accept only mmcv>=2.0.0rc4,<2.2.0; mmdet imports six undeclared.
        'det': ['mmcv>=2.0.0rc4,<2.2.0', 'mmdet>=3.1.0,<3.4.0', 'pycocotools', 'six'],
        'seg': ['mmcv>=2.0.0rc4,<2.2.0', 'mmsegmentation>=1.1.0,<1.3.0', 'ftfy', 'regex'],
        'tests': ['pytest', 'pytest-xdist', 'ruff', 'onnx', 'onnxruntime'],
    },
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
)
