"""The optional native engine (issue 13): everything else is in pyproject.toml.

A plain CPython extension (C API + buffer protocol) rather than pybind11/nanobind or
`torch.utils.cpp_extension`: it needs only the C++ compiler already required to build
CPython extensions, adds no build dependency, and does not tie the binary to one torch ABI.
`optional=True`: where the compiler is missing or fails, the install still succeeds and
`mobilenetv2.runtime.native` says in one line that the backend is unavailable (PyTorch and
the other backends run as before). MOBILENETV2_NATIVE_ASAN=1 builds it with
AddressSanitizer (run Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
"""

import os
import platform

from setuptools import Extension, setup

compile_args = ["-std=c++17", "-O3", "-ffp-contract=fast", "-Wno-psabi", "-fvisibility=hidden"]
link_args: list[str] = []
if os.environ.get("MOBILENETV2_NATIVE_ASAN") == "1":
    compile_args += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-O1"]
    link_args += ["-fsanitize=address"]
if platform.system() != "Linux":
    # pthread_atfork / __builtin_cpu_supports are what the engine relies on; elsewhere the
    # build may fail, which `optional` turns into the PyTorch fallback.
    pass

setup(
    ext_modules=[
        Extension(
            "mobilenetv2.runtime.native._engine",
            sources=["src/mobilenetv2/runtime/native/_engine.cpp"],
            depends=["src/mobilenetv2/runtime/native/_kernels.inc",
                     "src/mobilenetv2/runtime/native/_int8.inc",
                     "src/mobilenetv2/runtime/native/_kernels_int8.inc",
                     "src/mobilenetv2/runtime/native/_pool.h",
                     "src/mobilenetv2/runtime/native/_plans.h",
                     "src/mobilenetv2/runtime/native/_plans_int8.h"],
            language="c++",
            extra_compile_args=compile_args,
            extra_link_args=link_args + ["-pthread"],
            optional=True,
        ),
        # The fused training BatchNorm + ReLU6 (issue 14): optional too; where it does not
        # build, ConvBNAct trains through torch's BatchNorm2d and ReLU6 (mobilenetv2.model.bnact).
        Extension(
            "mobilenetv2.model._bnact",
            sources=["src/mobilenetv2/model/_bnact.cpp"],
            depends=["src/mobilenetv2/runtime/native/_pool.h",
                     "src/mobilenetv2/model/_dwconv.inc"],
            language="c++",
            extra_compile_args=compile_args,
            extra_link_args=link_args + ["-pthread"],
            optional=True,
        ),
    ],
)
