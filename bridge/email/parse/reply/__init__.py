"""Plain-text reply splitting: `split_reply` tells the new part of a mail from the quoted history
below (or above) it and from the sender's signature.

One module per strategy, each returning the line where what it recognises starts:
`quote_headers` (mail-parser-reply's quote headers of many languages), `separators`
("-----Original Message-----"), `attributions` ("On … wrote:" lines), `quote_blocks`
(trailing and bottom-posted ``>`` quotes) and `signatures`; `split` combines them. `scan`
finds the lines that the strategies look at closely, for all of them in one pass.
mail-parser-reply's patterns are compiled once and made fast to search in
`mail_parser_reply_patterns` (a workaround fence: it reads the library's regex source).
"""

from bridge.email.parse.reply.result import ReplySplit
from bridge.email.parse.reply.split import split_reply

__all__ = ["ReplySplit", "split_reply"]
