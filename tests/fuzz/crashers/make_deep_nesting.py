#!/usr/bin/python3
"""Writes torchscript/deep_nesting.pt: a valid TorchScript archive whose
forward returns an expression nested 200000 parentheses deep. LibTorch's
recursive-descent parser overflows the stack on it (SIGSEGV, in every build),
so it is the crasher the integration tests submit as a model.

  tests/fuzz/crashers/make_deep_nesting.py  (standard library only)
"""
import pathlib
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
SEED = HERE.parent / "corpus" / "torchscript_import_fuzzer" / "tiny_conv_bn_relu.pt"
DEPTH = 200_000


def main():
    with zipfile.ZipFile(SEED) as seed, zipfile.ZipFile(HERE / "torchscript" / "deep_nesting.pt", "w") as out:
        for info in seed.infolist():
            data = seed.read(info.filename)
            if info.filename == "archive/code/__torch__.py":
                nested = "(" * DEPTH + "_0" + ")" * DEPTH
                data = data.decode().replace("return _0", "return " + nested).encode()
            elif info.filename == "archive/code/__torch__.py.debug_pkl":
                continue  # its source ranges would no longer match
            out.writestr(info, data)


if __name__ == "__main__":
    main()
