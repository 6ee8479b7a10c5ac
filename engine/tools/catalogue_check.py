"""``validate --check-warehouse`` on the catalogue: products that product lists would leave out.

Product lists (engine.sql.product_lists) show only complete products: a name, url, image and
price, in stock. A product without an image, with a NULL price (or without a name or url) is
left out of every list, and a message whose list comes out empty is skipped at run time
(``no_products``); here such products are named before a pass runs, with how many there are and a
few ids. Order lines whose category no product of the catalogue has are named too: the
favourite category and its top sellers are read from the catalogue. Each is a warning at
``sources.products`` in engine.yaml. One GROUP BY query each; must not write.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlglot import exp

from engine.errors import Issue
from engine.model import ProjectConfig
from engine.spec.load import Document
from engine.sql.compile import render_sql, source_select
from engine.state.warehouse import Database

#: how many example product ids or categories a warning shows
SHOWN = 5
#: what makes a product incomplete, in the order a warning names them
_GAPS = (("no image", "image IS NULL OR image = ''"), ("a NULL price", "price IS NULL"),
         ("no name", "name IS NULL"), ("no url", "url IS NULL"))


def catalogue_issues(config: ProjectConfig, doc: Document, db: Database) -> list[Issue]:
    products = config.sources["products"]
    issues = []
    for gap, condition in _GAPS:
        query = (exp.select("product_id").from_(source_select(products, config.dialect).subquery("p"))
                 .where(condition).order_by("product_id"))
        ids = _rows(db, render_sql(query, config.dialect))
        if ids:
            shown = ", ".join(str(row[0]) for row in ids[:SHOWN]) + (" ..." if len(ids) > SHOWN else "")
            issues.append(doc.issue(("sources", "products"), f"{len(ids)} product(s) have {gap} (e.g. {shown}): "
                                    "product lists leave them out, and a message whose list is then empty is skipped "
                                    "(no_products)", fix="complete them in the shop's catalogue, or map the column "
                                    "under sources.products.columns to an expression that fills it",
                                    severity="warning"))
    items = config.sources.get("order_items")
    if items is not None and "category" in items.columns:
        query = (exp.select("i.category").distinct()
                 .from_(source_select(items, config.dialect).subquery("i"))
                 .where("i.category IS NOT NULL AND NOT EXISTS (SELECT 1 FROM p WHERE p.category = i.category)")
                 .with_("p", as_=source_select(products, config.dialect)).order_by("i.category"))
        unknown = [str(row[0]) for row in _rows(db, render_sql(query, config.dialect))]
        if unknown:
            issues.append(doc.issue(("sources", "products"), f"order lines have categories no product has: "
                                    + ", ".join(f"'{c}'" for c in unknown[:SHOWN]) + (" ..." if len(unknown) > SHOWN else "")
                                    + "; the favourite category and its top sellers are read from the catalogue, "
                                    "so these orders count for no category", fix="use the catalogue's category names in "
                                    "order_items.category, or add the products to the catalogue", severity="warning"))
    return issues


def _rows(db: Database, sql: str) -> list:
    try:
        with db.engine.connect() as conn:
            return conn.execute(sa.text(sql)).all()
    except sa.exc.SQLAlchemyError:
        return []  # the mapping itself was probed already; a failure here says nothing new
