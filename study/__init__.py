"""The lr-study command line: `python -m study.run` runs or resumes the study."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m study.<command>`: Ctrl-C during the imports is one line, exit 130
    from study.interrupt import exit_while_starting, pause_collection

    exit_while_starting()
    pause_collection()  # the command's imports without the cyclic garbage collector (study.interrupt)
