"""``llamacpp-cpu`` without its extra: listed as unavailable with the install line; using it is a refusal.

"Not installed" is real, not a stand-in for the model: the command line runs in a
fresh interpreter where ``import llama_cpp`` fails (``sys.modules['llama_cpp'] =
None``, Python's own marker of a module that cannot be imported), whether or not
the extra is installed on the machine running the tests.
"""

from __future__ import annotations

import subprocess
import sys

INSTALL = 'pip install "haq-plugin[llamacpp]"'
WITHOUT_LLAMA_CPP = ("import sys; sys.modules['llama_cpp'] = None; from haq_plugin.cli import main; "
                     "main(sys.argv[1:])")


def haq_without_llama_cpp(*args: str) -> subprocess.CompletedProcess:
    """``haq-plugin ARGS`` in an interpreter where llama_cpp does not import."""
    return subprocess.run([sys.executable, "-c", WITHOUT_LLAMA_CPP, *args], capture_output=True, text=True,
                          timeout=300)


def test_using_it_is_a_one_line_refusal_with_exit_status_2():
    result = haq_without_llama_cpp("cost", "--model", "llm:smollm2-135m", "--hw", "llamacpp-cpu",
                                   "--hw-option", "threads=2")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: hardware model 'llamacpp-cpu' is unavailable:")
    assert "llama_cpp" in lines[0] and lines[0].endswith(INSTALL)
    assert result.stdout == ""


def test_hw_list_shows_it_unavailable_with_the_install_line_and_hw_show_still_describes_it():
    listed = haq_without_llama_cpp("hw", "list")
    assert listed.returncode == 0, listed.stderr
    block = listed.stdout.split("llamacpp-cpu  (", 1)[1].split("\n\n", 1)[0]
    assert "unavailable: it needs the llamacpp extra (llama_cpp does not import" in block
    assert block.count(INSTALL) == 1
    assert "bitfusion" in listed.stdout and "llm-decode" in listed.stdout  # the others are unaffected
    shown = haq_without_llama_cpp("hw", "show", "llamacpp-cpu")
    assert shown.returncode == 0, shown.stderr
    assert "--hw-option threads=None" in shown.stdout and "--hw-option context=512" in shown.stdout
    assert "supported_bits: [2, 3, 4, 5, 6, 7, 8]" in shown.stdout
