"""Built-in students of crysdistill, installed as the import package ``crysdistill_adapters``.

Each module wraps one published model as a :class:`crysdistill.students.base.StudentAdapter` and
is registered under the ``crysdistill.students`` entry-point group in ``pyproject.toml``, exactly
as a third-party package would register its own (see ``docs/adapters.md``); crysdistill itself
never imports this package.

* ``cgcnn``: CGCNN (Xie & Grossman 2018);
* ``gatgnn``: GATGNN (Louis et al. 2020);
* ``deepergatgnn``: DeeperGATGNN (Omee et al. 2022);
* ``alignn``: ALIGNN (Choudhary & DeCost 2021), the ``alignn`` package's pure-torch model.
"""
