"""Make ``hide_solutions: true`` (the student edition) build with gated solutions.

sphinx-exercise 1.2.1 hides a solution by having the ``solution-start`` directive return nothing, but
``solution-end`` still returns a ``solution_end_node``. With no start node left, its MergeGatedSolutions
transform never pairs them, so

* the ``solution_end_node`` reaches the HTML writer, which has no visitor for it
  (``NotImplementedError: unknown node type: solution_end_node``), and
* everything between the two directives (the solution's code cells and prose) would be published,
  because only the ``solution-start`` directive's own body is dropped.

This extension replaces ``solution-start`` with a version that, when ``hide_solutions`` is true, leaves
a marker in the doctree; a transform then removes every node from the marker to the matching
``solution_end_node``, both included. The teacher's edition (``hide_solutions: false``) is untouched.
"""

from docutils import nodes
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)


class hidden_solution_start(nodes.Element):
    """Where a solution hidden from the student edition starts; removed before writing."""


class RemoveHiddenSolutions(SphinxTransform):
    """Remove each hidden solution: its marker, the nodes after it, and its ``solution_end_node``."""

    # Before sphinx-exercise's MergeGatedSolutions (10), after its CheckGatedDirectives (1).
    default_priority = 9

    def apply(self):
        from sphinx_exercise.nodes import solution_end_node

        if not self.config.hide_solutions:
            return  # the teacher's edition: sphinx-exercise merges the gated pairs itself
        for marker in list(self.document.findall(hidden_solution_start)):
            parent = marker.parent
            start = parent.index(marker)
            end = next((i for i in range(start + 1, len(parent.children))
                        if isinstance(parent.children[i], solution_end_node)), None)
            if end is None:
                logger.error("solution-start has no solution-end at the same level; the solution "
                             "cannot be hidden", location=marker)
                parent.remove(marker)
                continue
            del parent.children[start:end + 1]
        for orphan in list(self.document.findall(solution_end_node)):
            logger.error("solution-end without a solution-start", location=orphan)
            orphan.parent.remove(orphan)


def setup(app):
    app.setup_extension("sphinx_exercise")
    from sphinx_exercise.directive import SolutionStartDirective

    class HideableSolutionStartDirective(SolutionStartDirective):
        def run(self):
            result = super().run()  # records the gated structure that sphinx-exercise checks
            if self.config.hide_solutions:
                marker = hidden_solution_start()
                self.set_source_info(marker)
                return [marker]
            return result

    app.add_node(hidden_solution_start)
    app.add_directive("solution-start", HideableSolutionStartDirective, override=True)
    app.add_transform(RemoveHiddenSolutions)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
