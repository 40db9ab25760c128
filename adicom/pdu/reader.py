"""Incremental PDU decoding: bytes in as they arrive, whole PDUs out, every length bounded."""

from __future__ import annotations

from adicom.errors import PDUTooLarge, RemoteProtocolError
from adicom.pdu.pdus import (
    DECODERS,
    PDU,
    AAssociateAC,
    AAssociateRQ,
    BarePDV,
    PDataTF,
    bare_pdata,
)
from adicom.pdu.wire import PDU_HEADER, PDV_HEADER, split_items

#: Largest body accepted for a PDU other than P-DATA-TF. An A-ASSOCIATE-RQ
#: with the full 128 presentation contexts, each with a dozen transfer
#: syntaxes, stays far below this.
MAX_CONTROL_PDU = 1 << 20
#: The most PDVs accepted in one P-DATA-TF PDU. Peers put one to a few in
#: each (a command and its data set; DCMTK and pynetdicom one); this bounds
#: the work one PDU costs (decoded and handed on: about 2 ms at 256, which
#: is also the driver's work per loop turn, so a flood is served in slices).
MAX_PDVS_PER_PDU = 256


#: A-ASSOCIATE-RQ and -AC PDUs decoded already, by their bytes: at most
#: _ASSOCIATE_CACHE_SIZE of at most _ASSOCIATE_CACHE_BYTES each (about 1 MiB).
#: Never one with a user identity sub-item (credentials). The PDUs and all
#: they hold are frozen (tuples, str, bytes), so an association that got one
#: cannot change what the next one gets.
_ASSOCIATE_CACHE: dict[tuple[int, bytes], PDU] = {}
_ASSOCIATE_CACHE_SIZE = 256
_ASSOCIATE_CACHE_BYTES = 4096


class Staging:
    """The buffer reads land in before their bytes are copied to a reader's own.

    A read fills it and the reader copies what came out in the same call
    (:meth:`PDUReader.buffer_updated` right after :meth:`PDUReader.get_buffer`,
    as ``asyncio.BufferedProtocol`` does), so between calls it holds nothing
    of value. One per event loop can thus serve every association on it
    (the driver shares its loop's): 5,000 open associations then keep one
    buffer, not 5,000 of 16 KiB, and none is zero-filled per association.
    Never share one between threads (two loops): reads would interleave.
    """

    __slots__ = ("view",)

    def __init__(self) -> None:
        #: Grown on demand to the largest read size asked for.
        self.view = memoryview(bytearray())


# PDUReader's constants (see there), read as module names: read through an
# instance, a class attribute costs a lookup each (Python 3.11).
_LARGE = 1 << 16
_STAGING = 1 << 16
_STAGING_MIN = 1 << 14
_READ_PDUS = 16
_PREALLOCATE_MAX = 1 << 24
_CARRY = 1 << 13


def _hides_items(body: memoryview) -> bool:
    """Whether an A-ASSOCIATE body has items its decoded PDU does not show.

    The decoder keeps the last User Information item and passes over item
    types it does not know (PS3.8 9.3.1): an identity sub-item there would
    be in the bytes and not in the object (the one User Information item
    it kept shows its identity: see ``carries_credentials``). Called on a
    body that decoded.
    """
    users = 0
    for item_type, _ in split_items(body[68:]):
        if item_type == 0x50:
            users += 1
        elif item_type not in (0x10, 0x20, 0x21):
            return True
    return users > 1


class PDUReader:
    """Incremental PDU decoder: feed bytes as they arrive, take whole PDUs out.

    ``max_pdata_length`` bounds the length field of P-DATA-TF PDUs (the
    maximum length we announced; 0 means no limit), ``max_control_length``
    that of every other PDU. A length over its bound raises
    :class:`~adicom.errors.PDUTooLarge` as soon as the header is in, before the
    body is gathered.

    Bytes come in through :meth:`feed`, or, for a driver that can read into
    a buffer it is given (``asyncio.BufferedProtocol``), through
    :meth:`get_buffer` and :meth:`buffer_updated`: then the body of a large
    PDU is received straight into the buffer it is decoded from, and its
    bytes are copied once, by the kernel.

    >>> r = PDUReader()
    >>> r.feed(AReleaseRQ().encode()[:3])
    >>> r.next_pdu() is None
    True
    >>> r.feed(AReleaseRQ().encode()[3:])
    >>> r.next_pdu()
    AReleaseRQ()
    """

    __slots__ = (
        "_body",
        "_body_pos",
        "_body_type",
        "_body_view",
        "_buf",
        "_carried",
        "_lent",
        "_lent_end",
        "_lent_pos",
        "_read_size",
        "max_control_length",
        "max_pdata_length",
        "max_pdvs",
        "staging",
    )

    # The class constants below say what the reader does; they are read
    # as module names on its hot paths (_LARGE, ...), so setting them on the
    # class or a subclass changes nothing.

    #: A PDU body at least this long gets a buffer of its own.
    LARGE = _LARGE
    #: ... unless it is longer than this (a peer that announced no limit
    #: cannot make us allocate more than this ahead of its bytes).
    PREALLOCATE_MAX = _PREALLOCATE_MAX
    #: Small PDUs are received into a staging buffer, and every PDU of one
    #: read is decoded in one loop callback. So a read takes room for about
    #: READ_PDUS PDUs of the size last seen, between STAGING_MIN and
    #: STAGING: 64 KiB of C-FIND responses (~180) held a C-FIND SCU's loop
    #: for 3 ms, while 16 KiB reads cost a DCMTK peer's 16 KiB PDUs two
    #: reads each (10% of the C-STORE rate).
    STAGING = _STAGING
    STAGING_MIN = _STAGING_MIN
    READ_PDUS = _READ_PDUS
    #: The start of a PDU that a read left in our own buffer, up to this
    #: long, is put back in front of the next read (see :meth:`get_buffer`),
    #: which takes that much less (so at least STAGING_MIN - CARRY).
    CARRY = _CARRY

    def __init__(
        self,
        max_pdata_length: int = 0,
        max_control_length: int = MAX_CONTROL_PDU,
        max_pdvs: int = MAX_PDVS_PER_PDU,
        staging: Staging | None = None,
    ):
        self._buf = bytearray()
        self._body: bytearray | None = None
        self._body_view: memoryview | None = None
        self._body_pos = 0
        self._body_type = 0
        # A read parsed where it landed (buffer_lent): the staging buffer's
        # view, and the part of it not parsed yet.
        self._lent: memoryview | None = None
        self._lent_pos = 0
        self._lent_end = 0
        # How many bytes of our own buffer get_buffer put in front of the
        # read it handed out (the start of a PDU; still in _buf too).
        self._carried = 0
        #: Where small reads land first: the reader's own, unless a driver
        #: gives it its loop's (see :class:`Staging`).
        self.staging = Staging() if staging is None else staging
        self._read_size = _STAGING_MIN
        self.max_pdata_length = max_pdata_length
        self.max_control_length = max_control_length
        self.max_pdvs = max_pdvs

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        if self._lent is not None:
            self.keep()
        view = self._body_view
        if view is not None:
            take = min(len(data), len(view) - self._body_pos)
            view[self._body_pos : self._body_pos + take] = data[:take]
            self._body_pos += take
            if take < len(data):
                self._buf += data[take:]
        else:
            self._buf += data

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should go (then call :meth:`buffer_updated`).

        ``sizehint`` is ignored (``asyncio.BufferedProtocol.get_buffer``'s).
        """
        view = self._body_view
        if view is not None:
            return view[self._body_pos :]
        if self._lent is not None:
            self.keep()  # the read would land on what is left of the last one
        size = self._read_size
        stage = self.staging
        view = stage.view
        buf = self._buf
        if buf:
            carried = len(buf)
            if carried <= _CARRY:
                # The start of a PDU came in the last read (a DCMTK peer
                # writes a PDU's headers apart from its data, so a read of
                # just them is common): it goes in front of this read, so
                # that the PDU, whole, is parsed where the read lands
                # (buffer_lent) and its body is not copied into our buffer.
                # The staging buffer holds nothing of value between reads,
                # and nothing runs between this call and buffer_updated's.
                if len(view) < size:
                    view = stage.view = memoryview(bytearray(size))
                view[:carried] = buf
                self._carried = carried
                return view[carried:size]
        self._carried = 0
        if len(view) < size:
            # Grown only when large PDUs come (to STAGING at most).
            view = stage.view = memoryview(bytearray(size))
        return view if len(view) == size else view[:size]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the buffer :meth:`get_buffer` returned."""
        if self._body_view is not None:
            self._body_pos += nbytes
        else:
            if self._lent is not None:
                self.keep()
            carried = self._carried  # in our buffer already
            self._carried = 0
            self._buf += self.staging.view[carried : carried + nbytes]

    def buffer_lent(self, nbytes: int) -> None:
        """Like :meth:`buffer_updated`, but the read is parsed where it landed.

        The whole PDUs of the read are decoded in the staging buffer, not
        copied out of it first (a 16 KiB PDU was copied twice: into the
        reader's buffer, then out into its own bytes): a P-DATA-TF's PDV
        data are then views into the staging buffer, valid only until the
        next read lands there, which may be another association's when the
        buffer is its loop's. So only for a caller that is done with every
        P-DATA-TF :meth:`next_pdu` gives before it returns to the loop
        (a sink copies what it keeps: see ``adicom.dimse.DatasetSink``), and
        that calls :meth:`keep` when it stops taking PDUs with bytes left.
        What is left of the read once no whole PDU remains in it (the start
        of the next PDU) is copied into the reader's own buffer, as are PDUs
        other than P-DATA-TF, which may be kept.
        """
        if self._body_view is not None:
            self._body_pos += nbytes
            return
        if self._lent is not None:
            self.keep()
        carried = self._carried
        if carried:
            # Our buffer's bytes lie in front of the read (see get_buffer).
            self._carried = 0
            self._buf.clear()
            nbytes += carried
        if nbytes:
            self._lent = self.staging.view
            self._lent_pos = 0
            self._lent_end = nbytes

    def keep(self) -> None:
        """Copy what :meth:`next_pdu` has not taken of a lent read into our own buffer.

        The staging buffer may then take the next read (see :meth:`buffer_lent`).
        """
        lent = self._lent
        if lent is None:
            return
        self._lent = None
        rest = lent[self._lent_pos : self._lent_end]
        if self._body_view is not None:  # cannot be: lent reads stop before a large body
            self.feed(rest)  # pragma: no cover
        else:
            self._buf += rest

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their PDU."""
        lent = 0 if self._lent is None else self._lent_end - self._lent_pos
        return len(self._buf) + self._body_pos + lent

    @property
    def empty(self) -> bool:
        """True when no received byte waits: :meth:`next_pdu` would return None."""
        return not self._buf and self._body is None and self._lent is None

    def next_pdu(self) -> PDU | None:
        """Return the next whole PDU, or None if more bytes are needed.

        Raises :class:`~adicom.errors.RemoteProtocolError` for bytes that are
        not a valid PDU; the reader must not be used after that.
        """
        pdu = self.next_bare()
        return bare_pdata(pdu) if isinstance(pdu, tuple) else pdu

    def next_bare(self) -> PDU | BarePDV | None:
        """:meth:`next_pdu`, but a P-DATA-TF of one PDV may come as a :data:`BarePDV`.

        For the upper layer, which hands such a PDV on without the objects
        of a PDU (a lent read's, the usual: see :meth:`buffer_lent`).
        """
        buf = self._buf
        lent = self._lent
        if lent is not None:
            if not buf:
                # A lent read (see buffer_lent), a PDU from where the last
                # one ended: a whole P-DATA-TF is decoded where it lies (the
                # usual PDU: _next_lent's first case, a call less per PDU).
                pos = self._lent_pos
                end = self._lent_end
                if end - pos >= 6:
                    pdu_type, length = PDU_HEADER.unpack_from(lent, pos)
                    if pdu_type == 0x04:
                        limit = self.max_pdata_length
                        if limit and length > limit:
                            raise PDUTooLarge(length, limit)
                        # The next reads sized for this PDU (see _expect).
                        # The class's constants as module names: read
                        # through an instance they cost a lookup each.
                        read_size = _READ_PDUS * (6 + length)
                        self._read_size = (
                            _STAGING_MIN
                            if read_size < _STAGING_MIN
                            else read_size
                            if read_size < _STAGING
                            else _STAGING
                        )
                        stop = pos + 6 + length
                        if stop <= end:
                            if stop == end:
                                self._lent = None
                            else:
                                self._lent_pos = stop
                            if length >= 6:
                                size, context_id, control = PDV_HEADER.unpack_from(lent, pos + 6)
                                if size + 4 == length:  # so size >= 2: length >= 6
                                    # One PDV that fills the PDU: PDataTF.decode's
                                    # first case, bare (see next_bare).
                                    return (context_id, control, lent[pos + 12 : stop])
                            return PDataTF.decode(lent[pos + 6 : stop], self.max_pdvs)
                        if length < _LARGE:
                            # The start of a P-DATA-TF whose rest is still
                            # to come (often just its headers: see
                            # get_buffer): ours to keep, as _next_lent would
                            # keep it.
                            self._lent = None
                            buf += lent[pos:end]
                            return None
                return self._next_lent()
            self._top_up(buf)  # the PDU begun in the last read: then on as below
        body = self._body
        if body is not None:
            if self._body_pos < len(body):
                return None
            self._body = self._body_view = None
            self._body_pos = 0
            self._read_size = _STAGING
            return self._decode(self._body_type, memoryview(body))
        if len(buf) < 6:
            if buf and buf[0] not in DECODERS:
                raise self._unknown(buf[0])
            return None
        pdu_type, length = PDU_HEADER.unpack_from(buf, 0)
        if pdu_type not in DECODERS:
            raise self._unknown(pdu_type)
        limit = self.max_pdata_length if pdu_type == 0x04 else self.max_control_length
        if limit and length > limit:
            raise PDUTooLarge(length, limit)
        have = len(buf) - 6
        if have < length:
            if _LARGE <= length <= _PREALLOCATE_MAX:
                self._gather_in_place(pdu_type, length)
            else:
                self._expect(length)
            return None
        if have == length:
            # The usual case (a request, then its response): the buffer holds
            # just this PDU.
            if pdu_type == 0x04:
                # A P-DATA-TF's PDVs are views: give it the buffer itself
                # rather than a copy, and take a new one.
                self._buf = bytearray()
                self._read_size = min(_STAGING, max(_STAGING_MIN, _READ_PDUS * (6 + length)))
                return PDataTF.decode(memoryview(buf)[6:], self.max_pdvs)
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:
                data = bytes(view[: 6 + length])
            del buf[: 6 + length]
        self._read_size = min(_STAGING, max(_STAGING_MIN, _READ_PDUS * (6 + length)))
        if pdu_type == 0x04:  # _decode's first case, a call less per P-DATA-TF
            return PDataTF.decode(memoryview(data)[6:], self.max_pdvs)
        return self._decode(pdu_type, memoryview(data)[6:])

    def _next_lent(self) -> PDU | BarePDV | None:
        """:meth:`next_pdu` on a lent read, our own buffer being empty (see :meth:`buffer_lent`)."""
        lent = self._lent
        assert lent is not None
        pos = self._lent_pos
        end = self._lent_end
        if end - pos >= 6:
            pdu_type, length = PDU_HEADER.unpack_from(lent, pos)
            stop = pos + 6 + length
            if stop <= end:
                # A whole PDU in the read: the same checks as next_pdu's.
                if pdu_type not in DECODERS:
                    raise self._unknown(pdu_type)
                limit = self.max_pdata_length if pdu_type == 0x04 else self.max_control_length
                if limit and length > limit:
                    raise PDUTooLarge(length, limit)
                if stop == end:
                    self._lent = None
                else:
                    self._lent_pos = stop
                self._read_size = min(_STAGING, max(_STAGING_MIN, _READ_PDUS * (6 + length)))
                if pdu_type == 0x04:
                    return PDataTF.decode(lent[pos + 6 : stop], self.max_pdvs)
                # Other PDUs may be kept (a trace, the A-ASSOCIATE cache): copied.
                return self._decode(pdu_type, memoryview(bytes(lent[pos + 6 : stop])))
        # The start of a PDU whose rest is still to come: ours to keep.
        if end - pos >= 6:
            pdu_type, length = PDU_HEADER.unpack_from(lent, pos)
            limit = self.max_pdata_length if pdu_type == 0x04 else self.max_control_length
            if (
                _LARGE <= length <= _PREALLOCATE_MAX
                and pdu_type in DECODERS
                and not (limit and length > limit)
            ):
                # A large one: into a buffer of its own at once, as next_pdu
                # would gather it, without a copy into ours on the way.
                self._lent = None
                self._body = body = bytearray(length)
                self._body_view = view = memoryview(body)
                self._body_pos = have = end - pos - 6
                self._body_type = pdu_type
                view[:have] = lent[pos + 6 : end]
                return None
        self.keep()  # next_bare checks it (and refuses it, if it must) as ever
        return self.next_bare()

    def _top_up(self, buf: bytearray) -> None:
        """Complete the PDU begun in ``buf`` from the lent read, as far as it goes.

        Only that PDU's bytes are copied; the PDUs after it are parsed in place.
        """
        lent = self._lent
        assert lent is not None
        pos = self._lent_pos
        end = self._lent_end
        have = len(buf)
        if have < 6:
            take = min(6 - have, end - pos)
            buf += lent[pos : pos + take]
            pos += take
            have += take
        if have >= 6:
            length = PDU_HEADER.unpack_from(buf, 0)[1]
            take = min(6 + length - have, end - pos)
            if take > 0:
                buf += lent[pos : pos + take]
                pos += take
        if pos >= end:
            self._lent = None
        else:
            self._lent_pos = pos

    def ready(self) -> bool:
        """True when :meth:`next_pdu` has work to do: a whole PDU (or bad bytes) waits.

        Costs no decoding; a large body still arriving is moved to a buffer
        of its own, as :meth:`next_pdu` would, so that reading can go on
        into it without parsing (see :mod:`adicom.turns`).
        """
        if self._lent is not None:
            self.keep()
        body = self._body
        if body is not None:
            return self._body_pos >= len(body)
        buf = self._buf
        if len(buf) < 6:
            return bool(buf) and buf[0] not in DECODERS
        pdu_type, length = PDU_HEADER.unpack_from(buf, 0)
        limit = self.max_pdata_length if pdu_type == 0x04 else self.max_control_length
        if pdu_type not in DECODERS or (limit and length > limit):
            return True  # next_pdu raises
        if len(buf) - 6 >= length:
            return True
        if _LARGE <= length <= _PREALLOCATE_MAX:
            self._gather_in_place(pdu_type, length)
        else:
            self._expect(length)
        return False

    def _expect(self, length: int) -> None:
        """A PDU of ``length`` is begun: size the next reads for it, not for the PDUs before it.

        The rest of it then comes in one read where the kernel has it. A
        DCMTK peer writes a PDU's two headers apart from its data, so a read
        often ends just after them: reads sized for the small commands
        before (16 KiB) took a 40 KiB data set fragment in three, a loop
        turn each.
        """
        self._read_size = min(_STAGING, max(_STAGING_MIN, _READ_PDUS * (6 + length)))

    def _gather_in_place(self, pdu_type: int, length: int) -> None:
        # Gather the rest of the body in place (see get_buffer).
        buf = self._buf
        self._body = bytearray(length)
        self._body_view = memoryview(self._body)
        have = len(buf) - 6
        self._body_view[:have] = buf[6:]
        self._body_pos = have
        self._body_type = pdu_type
        buf.clear()

    def _decode(self, pdu_type: int, body: memoryview) -> PDU:
        if pdu_type == 0x04:
            return PDataTF.decode(body, self.max_pdvs)
        if (pdu_type == 0x01 or pdu_type == 0x02) and len(body) <= _ASSOCIATE_CACHE_BYTES:
            # A peer that associates again and again sends the same bytes
            # each time: decode them once (the PDUs are frozen, so one
            # object can serve every association that received them).
            key = (pdu_type, bytes(body))
            pdu = _ASSOCIATE_CACHE.get(key)
            if pdu is None:
                associate = (AAssociateRQ if pdu_type == 0x01 else AAssociateAC).decode(body)
                # Credentials (PS3.7 D.3.3.7) are never kept beyond the
                # association that received them, in the object or in the
                # key's bytes.
                if associate.carries_credentials or _hides_items(body):
                    return associate
                pdu = associate
                if len(_ASSOCIATE_CACHE) >= _ASSOCIATE_CACHE_SIZE:
                    _ASSOCIATE_CACHE.clear()  # a peer sending ever new requests
                _ASSOCIATE_CACHE[key] = pdu
            return pdu
        return DECODERS[pdu_type](body)

    @staticmethod
    def _unknown(pdu_type: int) -> RemoteProtocolError:
        # PS3.8 Table 9-26, reason 1: unrecognized PDU.
        return RemoteProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", abort_reason=1)
