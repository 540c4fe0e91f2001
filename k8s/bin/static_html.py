# nbconvert settings of the visualization Job (`jupyter nbconvert --config .../static_html.py --to html`):
# a page that shows the viewer's figures with no network.
#
# The viewer displays as a widget and, in the same output, as a PNG of its current view. nbconvert's HTML
# exporter prefers the widget view, which renders only with the widget manager's JavaScript from a CDN: offline
# the page was empty. Without the widget type in the display priority, the PNG is shown; without the widget
# state in the notebook metadata, no script tries to fetch that JavaScript.
c = get_config()  # noqa: F821 (traitlets config files get `get_config` from the loader)
c.NbConvertBase.display_data_priority = ['text/html', 'text/markdown', 'image/svg+xml', 'image/png', 'image/jpeg',
                                         'text/plain']
c.ClearMetadataPreprocessor.enabled = True
c.ClearMetadataPreprocessor.clear_cell_metadata = False
c.ClearMetadataPreprocessor.preserve_nb_metadata_mask = [('language_info', 'name'), ('kernelspec',)]
