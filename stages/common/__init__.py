"""What more than one stage needs: params, image decoding and preprocessing, atomic writes."""
