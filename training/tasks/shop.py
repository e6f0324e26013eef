"""The shop task: questions answered from a SQLite database through an MCP server of its own.

The worked example of a task over your own tools, end to end:

    python -m training.tasks.shop make DIR     # DIR/shop.db, DIR/questions.jsonl, DIR/mcp.json
    distillery eval run --questions DIR/questions.jsonl --mcp-config DIR/mcp.json --out E ...
    distillery serve --mcp-config DIR/mcp.json

`make` generates a small shop (products, customers, orders) from a seed, and questions
whose gold answers are computed from that database by SQL, so they are right by
construction. `serve` (what DIR/mcp.json runs) is an MCP server (the SDK's MCPServer, what
was FastMCP) over stdio with two tools, `tables()` (the schema) and `query(sql)` (one
read-only SELECT, its rows as lists); the database is opened read-only, so nothing the
model writes can change it. The task: graded `numeric` (counts, prices, totals), a
question whose answer is a name says `"grader": "exact"` itself; its runs get exactly
`tables` and `query`.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
from pathlib import Path
from typing import Any

from training.tasks.base import TaskSpec

TASK = TaskSpec(
    name="shop",
    grader="numeric",
    tools=("tables", "query"),
    description="questions about a shop's products, customers and orders, answered by SQL "
    "through the shop's MCP server",
)

SCHEMA = """\
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT UNIQUE, category TEXT, price REAL);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT UNIQUE, city TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                     product_id INTEGER REFERENCES products(id), quantity INTEGER,
                     order_date TEXT);"""
_PRODUCTS = {
    "kitchen": ["kettle", "toaster", "blender", "frying pan", "teapot"],
    "garden": ["rake", "hose", "watering can", "shovel", "plant pot"],
    "office": ["stapler", "desk lamp", "notebook", "pen set", "monitor stand"],
}
_CUSTOMERS = ["Ada", "Bruno", "Chiara", "Dmitri", "Eun-ji", "Farah", "Goran", "Hana"]
_CITIES = ["Lyon", "Porto", "Graz"]


def make_database(path: Path, seed: int = 0, orders: int = 60) -> None:
    """A shop database at `path` (replaced), the same for the same seed."""
    rng = random.Random(seed)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    try:
        db.executescript(SCHEMA)
        products = [(name, cat, round(rng.uniform(3, 120), 2))
                    for cat, names in _PRODUCTS.items() for name in names]  # fmt: skip
        db.executemany("INSERT INTO products (name, category, price) VALUES (?, ?, ?)", products)
        db.executemany("INSERT INTO customers (name, city) VALUES (?, ?)",
                       [(n, _CITIES[i % len(_CITIES)]) for i, n in enumerate(_CUSTOMERS)])
        rows = [(rng.randint(1, len(_CUSTOMERS)), rng.randint(1, len(products)),
                 rng.randint(1, 5), f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
                for _ in range(orders)]  # fmt: skip
        db.executemany(
            "INSERT INTO orders (customer_id, product_id, quantity, order_date) VALUES (?,?,?,?)",
            rows,
        )
        db.commit()
    finally:
        db.close()


def _one(db: sqlite3.Connection, sql: str, *args: Any) -> Any:
    return db.execute(sql, args).fetchone()[0]


def _unique_top(db: sqlite3.Connection, sql: str, *args: Any) -> str | None:
    """The first row's name when its value is not tied with the second's."""
    rows = db.execute(sql, args).fetchmany(2)
    if not rows or (len(rows) == 2 and rows[0][1] == rows[1][1]):
        return None
    return str(rows[0][0])


_SPENT = ("SELECT c.name, ROUND(SUM(o.quantity * p.price), 2) AS s FROM orders o "
          "JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = o.product_id "
          "GROUP BY c.id ORDER BY s DESC")  # fmt: skip


def make_questions(db_path: Path) -> list[dict[str, Any]]:
    """Questions about the database at `db_path`, each with its gold answer computed by SQL."""
    db = sqlite3.connect(db_path)
    out: list[dict[str, Any]] = []

    def add(question: str, answer: Any, grader: str | None = None) -> None:
        task: Any = "shop" if grader is None else {"name": "shop", "grader": grader}
        out.append({"id": f"shop-{len(out)}", "question": question, "answer": answer,
                    "task": task})  # fmt: skip

    try:
        for name in ("kettle", "rake", "stapler"):
            add(f"What is the price of the {name}?",
                _one(db, "SELECT price FROM products WHERE name = ?", name))
        for customer in ("Ada", "Farah"):
            add(f"How many orders did {customer} place?",
                _one(db, "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
                         "WHERE c.name = ?", customer))  # fmt: skip
        for name in ("teapot", "hose"):
            add(f"How many units of the {name} were ordered in total?",
                _one(db, "SELECT COALESCE(SUM(quantity), 0) FROM orders o JOIN products p "
                         "ON p.id = o.product_id WHERE p.name = ?", name))  # fmt: skip
        for city in _CITIES:
            add(f"What is the total revenue (price times quantity) of the orders placed by "
                f"customers in {city}?",
                _one(db, "SELECT ROUND(SUM(o.quantity * p.price), 2) FROM orders o JOIN "
                         "customers c ON c.id = o.customer_id JOIN products p ON "
                         "p.id = o.product_id WHERE c.city = ?", city))  # fmt: skip
        for category in _PRODUCTS:
            top = _unique_top(db, "SELECT name, price FROM products WHERE category = ? "
                                  "ORDER BY price DESC", category)  # fmt: skip
            if top is not None:
                add(f"Which {category} product is the most expensive?", top, "exact")
        top = _unique_top(db, _SPENT)
        if top is not None:
            add("Which customer spent the most money in total?", top, "exact")
    finally:
        db.close()
    return out


def make_example(folder: Path, seed: int = 0) -> dict[str, str]:
    """The whole example in `folder`: shop.db, questions.jsonl and mcp.json (the server
    entry for --mcp-config). Returns the three paths."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "shop.db"
    make_database(db, seed)
    questions = folder / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in make_questions(db)))
    config = folder / "mcp.json"
    server = {"command": sys.executable,
              "args": ["-m", "training.tasks.shop", "serve", "--db", str(db.resolve())],
              "cwd": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    config.write_text(json.dumps({"mcpServers": {"shop": server}}, indent=2) + "\n")
    return {"db": str(db), "questions": str(questions), "mcp_config": str(config)}


def build_server(db_path: Path) -> Any:
    """The shop's MCP server over the database at `db_path`, opened read-only."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    if not db_path.is_file():
        raise SystemExit(f"no shop database at {db_path}: run `python -m training.tasks.shop "
                         "make DIR` first")  # fmt: skip
    db = sqlite3.connect(f"file:{db_path.resolve()}?mode=ro", uri=True, check_same_thread=False)
    server = MCPServer("shop")

    @server.tool()
    def tables() -> str:
        """The shop database's tables and columns, as SQL CREATE statements."""
        return SCHEMA

    @server.tool()
    def query(sql: str) -> list[list[Any]]:
        """Runs one read-only SQL SELECT on the shop database (tables: products, customers,
        orders; see tables()) and returns its rows, each a list of column values."""
        if not sql.lstrip().lower().startswith(("select", "with")):
            raise ToolError("only SELECT statements are allowed")
        try:
            return [list(row) for row in db.execute(sql).fetchmany(200)]
        except sqlite3.Error as e:
            raise ToolError(f"SQL error: {e}") from None

    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tasks.shop",
                                     description="the shop task's database, questions, server")
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("make", help="write DIR/shop.db, DIR/questions.jsonl, DIR/mcp.json")
    make.add_argument("folder", type=Path)
    make.add_argument("--seed", type=int, default=0)
    serve = sub.add_parser("serve", help="the MCP server over stdio (what mcp.json runs)")
    serve.add_argument("--db", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.action == "make":
        print(json.dumps({"ok": True, **make_example(args.folder, args.seed)}))
        return 0
    build_server(args.db).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
