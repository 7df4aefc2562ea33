"""The report page's style sheet, inlined in every page."""

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1400px; background: #fafafa; }
h1 { margin: 0.2em 0; font-size: 1.7em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub, .note { color: #555; }
table.metrics { border-collapse: collapse; background: white; }
table.metrics th, table.metrics td { padding: 4px 14px; border-bottom: 1px solid #eee; }
table.metrics th { text-align: left; font-weight: 500; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart { width: 480px; max-width: 100%; height: auto; border: 1px solid #ddd; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.card { margin: 0; background: white; border: 1px solid #ddd; border-radius: 6px;
        padding: 8px; display: flex; flex-direction: column; }
.card img { display: block; max-width: 100%; height: 180px; object-fit: contain;
            margin: 0 auto; background: #f0f0f0; width: 100%; }
.card figcaption { font-size: 0.9em; }
.name { color: #777; font-size: 0.85em; margin: 6px 0 2px; display: flex; gap: 8px;
        justify-content: space-between; }
.file { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
.score { flex: none; color: #0b5394; font-weight: 600; }
.gen { font-weight: 600; margin: 2px 0 4px; }
.refs { margin: 0; padding-left: 1.3em; color: #555; font-size: 0.92em; }
.missing { height: 180px; display: flex; align-items: center; justify-content: center;
           background: #fee; color: #a00; }
.heatrow { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 4px 10px;
           margin-bottom: 10px; }
.heats { display: flex; flex-wrap: wrap; gap: 6px; }
.heat { margin: 0; text-align: center; }
.heat img { display: block; width: 112px; height: 112px; }
.heat figcaption { font-size: 0.9em; }
"""
