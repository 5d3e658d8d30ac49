"""Builds the C++ extension ``instaseg._C`` from every ``instaseg/ops/csrc/*.cpp`` (metadata: pyproject.toml).

Each source file registers its own operators (``torch.ops.instaseg.*``): adding a kernel means adding a file.
Build with ``pip install --no-build-isolation -e .`` (torch must already be installed: the extension is
compiled against it), or in place while developing: ``python setup.py build_ext --inplace``.
"""

from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).resolve().parent

# Relative to the project root, where pip runs the build: setuptools rejects absolute source paths.
sources = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "instaseg" / "ops" / "csrc").glob("*.cpp"))

setup(
    ext_modules=[
        CppExtension(
            "instaseg._C",
            sources,
            # -fopenmp makes at::parallel_for an OpenMP loop (torch's backend); without it, it runs serially.
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
)
