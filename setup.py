"""Packaging for `drifting`: every field comes from settings.ini (the nbdev 2 source of metadata)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]

licenses = {"apache2": "Apache-2.0"}  # SPDX expression (license classifiers are deprecated)
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
lic_name = licenses[c["license"]]
py_versions = ["3.11", "3.12"]
min_python = c["min_python"]

setuptools.setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    keywords=c["keywords"].split(),
    license=lic_name,
    author=c["author"],
    author_email=c["author_email"],
    classifiers=[
        "Development Status :: " + statuses[int(c["status"]) - 1],
        "Intended Audience :: " + c["audience"].title(),
        "Natural Language :: " + c["language"].title(),
    ] + [f"Programming Language :: Python :: {v}" for v in py_versions[py_versions.index(min_python):]],
    url=c["git_url"],
    project_urls={"Documentation": c["doc_host"] + c["doc_baseurl"], "Source": c["git_url"]},
    packages=setuptools.find_packages(include=[c["lib_name"], c["lib_name"] + ".*"]),
    include_package_data=True,
    install_requires=c.get("requirements", "").split(),
    extras_require={k: c.get(f"{k}_requirements", "").split() for k in ("dev", "docs", "eval", "triton", "trackers")},
    python_requires=c["python_requires"],
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={
        "console_scripts": c.get("console_scripts", "").split(),
        "nbdev": [f"{c['lib_path']}={c['lib_path']}._modidx:d"],
    },
)
