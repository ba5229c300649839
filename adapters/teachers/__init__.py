"""Built-in teachers of crysdistill, installed as ``crysdistill_adapters.teachers``.

Each module wraps one model as a :class:`crysdistill.teachers.base.TeacherAdapter` and is
registered under the ``crysdistill.teachers`` entry-point group in ``pyproject.toml``, exactly as a
third-party package registers its own (see ``docs/teachers.md``); crysdistill never imports them.

* ``crysgnn``: the CrysGNN encoder this project pretrains by self-supervision (shipped
  checkpoints ``default``, ``crysgnn``, ``mp-eform``, or any ``teacher.pt``);
* ``chgnet``: CHGNet (Deng et al. 2023), a universal potential trained on MPtrj (``chgnet`` package);
* ``sevennet``: SevenNet-0 (Park et al. 2024), an equivariant universal potential trained on MPtrj
  (``sevenn`` package); only its rotation-invariant scalar channels are exposed.
"""
