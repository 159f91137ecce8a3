"""mmunirep: UniRepLKNet for OpenMMLab 2.0 (MMDetection 3.x, MMSegmentation 1.x).

The dependency ranges below are what mmunirep really supports. `tools/install.sh` installs one
pinned, tested set of them (requirements/stack.txt) plus torch and a locally built mmcv; users with
a working torch + mmcv can `pip install --no-build-isolation -e .` and keep theirs.
"""
import os

from setuptools import find_packages, setup


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
    # The backbone itself needs only these three.
    install_requires=['torch>=2.0', 'mmengine>=0.10.0,<1.0', 'timm>=0.9'],
    extras_require={
        # mmdet 3.3 / mmseg 1.2 accept only mmcv>=2.0.0rc4,<2.2.0; mmdet imports six undeclared.
        'det': ['mmcv>=2.0.0rc4,<2.2.0', 'mmdet>=3.1.0,<3.4.0', 'pycocotools', 'six'],
        'seg': ['mmcv>=2.0.0rc4,<2.2.0', 'mmsegmentation>=1.1.0,<1.3.0', 'ftfy', 'regex'],
        'tests': ['pytest', 'onnx', 'onnxruntime'],
    },
    zip_safe=False,
)
